"""``manage.py ws_asyncapi [--output FILE | --check FILE]``: the stream's AsyncAPI 3 document.

Writes the AsyncAPI 3.0.0 document of the stream as this deployment's settings
configure it (:func:`broker_ws.wire.asyncapi.document`), as JSON: AsyncAPI
documents may be JSON or YAML, and JSON needs no YAML library. The text is
deterministic (sorted keys, no timestamps), so it can be committed and checked:
``--check FILE`` exits non-zero, saying so, when FILE is not what would be written.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from broker_ws.wire import asyncapi


class Command(BaseCommand):
    help = (
        "Write the AsyncAPI 3.0.0 document (JSON) of the stream as this deployment "
        "configures it: to stdout, to --output FILE, or compare it with --check FILE."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--output", "-o", metavar="FILE", help="write it to FILE")
        where.add_argument(
            "--check",
            metavar="FILE",
            help="exit with status 1 if FILE differs from what would be written",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        text = asyncapi.dumps(asyncapi.document())
        if options["check"]:
            self._check(Path(options["check"]), text)
        elif options["output"]:
            Path(options["output"]).write_text(text, encoding="utf-8")
            self.stderr.write(f"wrote {options['output']}")
        else:
            self.stdout.write(text, ending="")

    def _check(self, path: Path, text: str) -> None:
        try:
            current = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"{path}: cannot read it ({exc.strerror})", returncode=1) from exc
        if current == text:
            self.stderr.write(f"{path} is up to date")
            return
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=str(path),
            tofile="manage.py ws_asyncapi",
            n=1,
        )
        shown = "".join(list(diff)[:60])
        raise CommandError(
            f"{path} is out of date: regenerate it with "
            f"`manage.py ws_asyncapi --output {path}`\n{shown}",
            returncode=1,
        )
