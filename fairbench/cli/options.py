"""Options every ``fairbench`` command shares: ``-v/--verbose`` means the same before or after
the command name (say more: INFO logging; ``list`` also shows every parameter)."""

from __future__ import annotations

import logging

import click

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
