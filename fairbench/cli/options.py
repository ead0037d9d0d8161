"""What every ``fairbench`` command shares: bad input as one ``error:`` line and exit code 2
(:class:`ErrorLineGroup`), and ``-v/--verbose``, which means the same before or after the
command name (say more: INFO logging; ``list`` also shows every parameter)."""

from __future__ import annotations

import logging
from typing import Any

import click

from fairbench.core.errors import FairbenchError

#: the exit code of bad input (a usage error, as click's own)
EXIT_USAGE = 2


class ErrorLineGroup(click.Group):
    """Prints a :class:`FairbenchError`, or a file that cannot be read or written, as one
    ``error:`` line on stderr and exits with code 2 (no traceback). Every command group of
    the command line uses it, so ``fairbench data`` and ``fairbench runs`` behave the same
    when used on their own, outside ``fairbench``."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """click's usage errors (an unknown option or command, a value of the wrong type, a
        missing argument) as one ``error:`` line naming the command's ``--help``, exit 2."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else (self.name or "fairbench")
            message = " ".join(exc.format_message().split())
            click.echo(f"error: {message} (see `{where} --help`)", err=True)
            raise SystemExit(EXIT_USAGE) from None
        except click.ClickException as exc:
            exc.show()
            raise SystemExit(exc.exit_code) from None
        except click.Abort:
            click.echo("Aborted!", err=True)
            raise SystemExit(1) from None
        raise SystemExit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FairbenchError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_USAGE)
        except OSError as exc:  # unreadable data, unwritable output: the environment's
            if exc.filename is None:
                raise
            click.echo(f"error: {exc.strerror or exc}: {exc.filename!r}; check that it exists "
                       "and that this user may read (or write) it", err=True)
            ctx.exit(EXIT_USAGE)

VERBOSE_HELP = ("Say more: log each step (INFO level); with `list`, every parameter too. The "
                "same before or after the command name.")


def _say_more(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().meta["fairbench.verbose"] = True
        logging.getLogger().setLevel(logging.INFO)


def verbose_requested() -> bool:
    """Whether ``-v`` was given, before or after the command name."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    root = ctx.find_root()
    return bool(root.params.get("verbose") or root.meta.get("fairbench.verbose"))


def add_verbose_everywhere(group: click.Group) -> None:
    """Give every command under ``group`` the group's ``-v/--verbose`` (same meaning)."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            add_verbose_everywhere(command)
        elif not any("-v" in getattr(o, "opts", ()) for o in command.params):
            command.params.append(click.Option(["-v", "--verbose"], is_flag=True,
                                               expose_value=False, is_eager=True,
                                               callback=_say_more, help=VERBOSE_HELP))


def _trust_unmanifested(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        import os

        from fairbench.run.store import TRUST_UNMANIFESTED

        os.environ[TRUST_UNMANIFESTED] = "1"


def trust_unmanifested_option(f: Any) -> Any:
    """``--trust-unmanifested``: read runs without a manifest (unverifiable: written before
    manifests, or edited) with a warning on each, instead of refusing them."""
    return click.option(
        "--trust-unmanifested", is_flag=True, expose_value=False, callback=_trust_unmanifested,
        help="Read runs that have no manifest.json (their files cannot be verified) with a "
             "warning on each, instead of refusing them.")(f)
