"""Round-trip TOML for the snippets: parse with positions in errors, find where a key is.

tomlkit keeps a user's comments, order and spacing through a merge. The file
is checked with the standard library's tomllib first, which follows TOML 1.0
strictly as the Go parsers the clients use do, so a file either client would
reject is reported here with its line and column.
"""

from __future__ import annotations

import re
import tomllib

import tomlkit
import tomlkit.exceptions
from tomlkit.toml_document import TOMLDocument

from gateway.snippets import FileError, SourceFile, line_column

_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
# tomllib's suffix for an error at the end of the text, in place of a position.
_AT_END = " (at end of document)"


def parse(source: SourceFile, what: str) -> TOMLDocument:
    """Parse `source` as TOML; an empty or missing file is an empty document."""
    try:
        tomllib.loads(source.text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _POSITION.search(message)
        line, column = (int(match.group(1)), int(match.group(2))) if match else (None, None)
        reason = _POSITION.sub("", message) if match else message
        if message.endswith(_AT_END):
            line, column = line_column(source.text)
            reason = message.removesuffix(_AT_END)
        raise _parse_error(source, line, column, reason, what) from None
    try:
        return tomlkit.parse(source.text)
    except tomlkit.exceptions.ParseError as exc:  # pragma: no cover - tomllib rejects these first
        raise _parse_error(source, exc.line, exc.col, str(exc), what) from None


def _parse_error(source, line, column, reason, what) -> FileError:
    where = f"line {line} column {column}" if line is not None else "(position unknown)"
    return FileError(
        f"{source.path} {where}: {reason}, so {what} cannot read this file, and it "
        "was left unchanged. Fix the TOML there and run the command again.",
        source.path,
        line,
        column,
    )


def key_line(source: SourceFile, key: str) -> int:
    """Return the 1-based line where `key` is set or its table opens, or 1 if unknown."""
    quoted = re.escape(key)
    pattern = re.compile(
        rf'^\s*(\[\[?\s*([\w.-]+\.)?("?{quoted}"?)[\].]|("?{quoted}"?)\s*=)', re.MULTILINE
    )
    match = pattern.search(source.text)
    return source.text.count("\n", 0, match.start()) + 1 if match else 1


def type_error(source: SourceFile, key: str, expected: str, example: str) -> FileError:
    """Return the error for a key whose value has the wrong TOML type."""
    line = key_line(source, key)
    return FileError(
        f"{source.path} line {line} column 1: {key!r} must be {expected}, and the "
        f"file was left unchanged: change it to the form {example} and run the "
        "command again.",
        source.path,
        line,
        1,
    )


def dumps(document: TOMLDocument, original: str = "") -> str:
    """Serialise `document`, ending a changed file with a newline."""
    text = tomlkit.dumps(document)
    if text == original or not text or text.endswith("\n"):
        return text
    return text + "\n"
