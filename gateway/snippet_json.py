"""Edit the top level of a JSON object in place, so every other byte of the file stays.

Python's json module parses and writes whole documents, which would reflow a
user's daemon.json. Here the top-level members are located with the json
module's own scanner, and only the text of the members being changed is
replaced: other keys keep their order, spacing and indentation exactly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from json.decoder import scanstring

from gateway.snippets import FileError, SourceFile, line_column

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
# JSON has no comments, and Go's encoding/json (dockerd's parser) rejects each of these.
_COMMENT_STARTS = ("//", "/*", "#")


@dataclass
class Member:
    """One top-level `"key": value` with the offsets of its key and value text."""

    key: str
    value: object
    key_start: int
    value_start: int
    value_end: int


@dataclass
class JsonObject:
    text: str
    start: int
    end: int
    members: list[Member]

    def find(self, key: str) -> Member | None:
        # Go's encoding/json keeps the last of duplicate keys, as dockerd does.
        found = [member for member in self.members if member.key == key]
        return found[-1] if found else None

    @property
    def newline(self) -> str:
        """Return the file's line ending, so added lines match (Windows editors write CRLF)."""
        return "\r\n" if "\r\n" in self.text else "\n"

    def is_multiline(self) -> bool:
        return "\n" in self.text[self.start : self.end]

    def indent(self) -> str:
        """Return the indentation of the first member line, or two spaces."""
        for member in self.members:
            line_start = self.text.rfind("\n", 0, member.key_start) + 1
            prefix = self.text[line_start : member.key_start]
            if line_start > self.start and not prefix.strip():
                return prefix
        return "  "


def parse_object(source: SourceFile, what: str) -> JsonObject:
    """Parse `source` as one JSON object, raising an error with line and column.

    An empty file reads as `{}`. The error names the file, the position and
    what to do, and the caller leaves the file untouched.
    """
    text = source.text
    if not text.strip():
        return JsonObject("{}", 0, 2, [])
    try:
        _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        if text.startswith(_COMMENT_STARTS, exc.pos):
            raise _comment_error(source, exc, what) from None
        raise FileError(
            f"{source.path} line {exc.lineno} column {exc.colno}: {exc.msg}, so "
            f"{what} would not start with this file, and it was left unchanged. Fix "
            "it by hand, or add --repair to print a repaired file to check first.",
            source.path,
            exc.lineno,
            exc.colno,
        ) from None
    start = _WHITESPACE.match(text, 0).end()
    if text[start] != "{":
        kind = _json_kind(_DECODER.decode(text))
        line, column = line_column(text[:start])
        raise FileError(
            f"{source.path} line {line} column {column}: the file is a JSON {kind}, "
            f"but {what} needs an object ({{...}}) at the top, and the file was left "
            'unchanged. Wrap the settings in braces, for example {"debug": false}.',
            source.path,
            line,
            column,
        )
    return _scan_members(text, start)


def _comment_error(source: SourceFile, exc: json.JSONDecodeError, what: str) -> FileError:
    """Return the error for a parse failure at a comment, naming every comment line.

    --repair is not offered, because it removes only trailing commas and
    appended objects.
    """
    # The failure is at the first comment, so the scan finds it unless the
    # scanner and the json module disagree on strings: then name that position.
    found = find_comments(source.text)
    if not found:
        found = [(exc.lineno, source.text[exc.pos :].split("\n")[0])]
    first_line, first_text = found[0]
    if len(first_text) > 60:
        first_text = first_text[:57] + "..."
    other_lines = sorted({line for line, _ in found[1:]} - {first_line})
    if len(other_lines) == 1:
        others = f", and the comment on line {other_lines[0]}"
    elif other_lines:
        others = f", and the comments on lines {', '.join(map(str, other_lines))}"
    else:
        others = ""
    return FileError(
        f"{source.path} line {exc.lineno} column {exc.colno}: {what} does not accept "
        "comments in JSON, so it would not start with this file, and the file was left "
        f"unchanged: remove the comment {first_text!r} on line {first_line}{others}, "
        "then run the command again.",
        source.path,
        exc.lineno,
        exc.colno,
    )


def find_comments(text: str) -> list[tuple[int, str]]:
    """Return the line and text of each `//`, `/* */` or `#` comment outside JSON strings.

    The text of a comment ends at its line end, or at `*/` for a block comment.
    """
    found: list[tuple[int, str]] = []
    in_string = False
    escaped = False
    index = 0
    while index < len(text):
        char = text[index]
        if in_string:
            in_string = not (char == '"' and not escaped)
            escaped = char == "\\" and not escaped
        elif char == '"':
            in_string = True
        elif text.startswith(_COMMENT_STARTS, index):
            line_end = text.find("\n", index)
            line_end = len(text) if line_end < 0 else line_end
            end = line_end
            if text.startswith("/*", index):
                close = text.find("*/", index + 2)
                end = close + 2 if 0 <= close < line_end else line_end
                if close >= 0:
                    # A block comment may span lines, so the scan resumes after its */.
                    line_end = close + 2
            found.append((line_column(text[:index])[0], text[index:end].strip()))
            index = line_end
            continue
        index += 1
    return found


def _scan_members(text: str, start: int) -> JsonObject:
    members: list[Member] = []
    position = _WHITESPACE.match(text, start + 1).end()
    if text[position] == "}":
        return JsonObject(text, start, position + 1, members)
    while True:
        key_start = position
        key, position = scanstring(text, position + 1)
        position = _WHITESPACE.match(text, position).end() + 1  # past the colon
        value_start = _WHITESPACE.match(text, position).end()
        value, value_end = _DECODER.raw_decode(text, value_start)
        members.append(Member(key, value, key_start, value_start, value_end))
        position = _WHITESPACE.match(text, value_end).end()
        if text[position] == "}":
            return JsonObject(text, start, position + 1, members)
        position = _WHITESPACE.match(text, position + 1).end()  # past the comma


def _json_kind(value: object) -> str:
    return {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def position_of(source: SourceFile, offset: int) -> str:
    line, column = line_column(source.text[:offset])
    return f"{source.path} line {line} column {column}"


# --- Edits ------------------------------------------------------------------------


def format_list(values: list[str], document: JsonObject, old: Member | None) -> str:
    """Write a list of strings in the layout the old value had (inline or one per line)."""
    text = document.text
    if old is None or "\n" not in text[old.value_start : old.value_end]:
        return json.dumps(values)
    line_start = text.rfind("\n", 0, old.key_start) + 1
    outer = text[line_start : old.key_start]
    if outer.strip():
        outer = ""
    first = _WHITESPACE.match(text, old.value_start + 1).end()
    inner_start = text.rfind("\n", 0, first) + 1
    inner = text[inner_start:first] if inner_start > old.value_start else outer + "  "
    if not values:
        return "[]"
    newline = document.newline
    items = ("," + newline).join(inner + json.dumps(value) for value in values)
    return "[" + newline + items + newline + outer + "]"


def replace_value(document: JsonObject, member: Member, new_text: str) -> JsonObject:
    text = document.text
    return _rescan(text[: member.value_start] + new_text + text[member.value_end :], document)


def rename_key(document: JsonObject, member: Member, new_key: str) -> JsonObject:
    text = document.text
    key_end = scanstring(text, member.key_start + 1)[1]
    return _rescan(text[: member.key_start] + json.dumps(new_key) + text[key_end:], document)


def remove_member(document: JsonObject, member: Member) -> JsonObject:
    """Remove `member` with one neighbouring comma, keeping the others' layout."""
    text = document.text
    index = document.members.index(member)
    if len(document.members) == 1:
        new = text[: document.start] + "{}" + text[document.end :]
    elif index + 1 < len(document.members):
        following = document.members[index + 1]
        line_start = text.rfind("\n", 0, member.key_start) + 1
        cut_start = line_start if not text[line_start : member.key_start].strip() else member.key_start
        next_line = text.rfind("\n", 0, following.key_start) + 1
        cut_end = next_line if not text[next_line : following.key_start].strip() else following.key_start
        new = text[:cut_start] + text[cut_end:]
    else:
        previous = document.members[index - 1]
        new = text[: previous.value_end] + text[member.value_end :]
    return _rescan(new, document)


def add_member(document: JsonObject, key: str, value_text: str) -> JsonObject:
    """Add `"key": value` after the last member, in the object's own layout."""
    text = document.text
    member_text = json.dumps(key) + ": " + value_text
    if not document.members:
        newline = document.newline
        new_object = "{" + newline + "  " + member_text + newline + "}"
        return _rescan(text[: document.start] + new_object + text[document.end :], document)
    last = document.members[-1]
    if document.is_multiline():
        insert = "," + document.newline + document.indent() + member_text
    else:
        insert = ", " + member_text
    return _rescan(text[: last.value_end] + insert + text[last.value_end :], document)


def _rescan(text: str, document: JsonObject) -> JsonObject:
    return _scan_members(text, document.start)


# --- Repair -------------------------------------------------------------------------


def repair(text: str) -> tuple[dict, list[str]] | None:
    """Return a best repair of a broken daemon.json as a dict, with what was changed.

    Two faults are repaired, the ones that appending to the file by hand
    produces: trailing commas, and a second object after the first (merged
    into it when it parses, dropped when it does not). Returns None when the
    first object itself cannot be read.
    """
    notes: list[str] = []
    cleaned = _drop_trailing_commas(text)
    if cleaned != text:
        notes.append("Removed a comma before a closing bracket or brace.")
    position = _WHITESPACE.match(cleaned, 0).end()
    try:
        merged, position = _DECODER.raw_decode(cleaned, position)
    except json.JSONDecodeError:
        return None
    if not isinstance(merged, dict):
        return None
    while True:
        position = _WHITESPACE.match(cleaned, position).end()
        if position >= len(cleaned):
            return merged, notes
        line, column = line_column(cleaned[:position])
        try:
            extra, position = _DECODER.raw_decode(cleaned, position)
        except json.JSONDecodeError:
            dropped = cleaned[position:].strip()
            notes.append(
                f"Dropped the text from line {line} column {column} on, which is not "
                f"JSON: {dropped[:80]!r}."
            )
            return merged, notes
        if not isinstance(extra, dict):
            notes.append(f"Dropped the JSON value at line {line} column {column}.")
            continue
        merged.update(extra)
        notes.append(f"Merged the second object at line {line} column {column} into the first.")


def _drop_trailing_commas(text: str) -> str:
    output: list[str] = []
    in_string = False
    escaped = False
    for index, char in enumerate(text):
        if in_string:
            in_string = not (char == '"' and not escaped)
            escaped = char == "\\" and not escaped
        elif char == '"':
            in_string = True
        elif char == ",":
            rest = text[index + 1 :].lstrip(" \t\r\n")
            if rest[:1] in ("]", "}"):
                continue
        output.append(char)
    return "".join(output)
