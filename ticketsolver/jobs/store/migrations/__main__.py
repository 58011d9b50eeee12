"""``python -m ticketsolver.jobs.store.migrations revision -m "..."``: Alembic's command line on the store's scripts."""

from __future__ import annotations

from alembic.config import CommandLine

from ticketsolver.jobs.store.migrations import config


def main() -> None:
    cli = CommandLine(prog="python -m ticketsolver.jobs.store.migrations")
    options = cli.parser.parse_args()
    cfg = config()
    cfg.cmd_opts = options
    cfg.set_main_option("sqlalchemy.url", "sqlite://")
    cli.run_cmd(cfg, options)


if __name__ == "__main__":
    main()
