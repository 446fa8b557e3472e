#!/usr/bin/env python3
"""file_checks: an `exec` agent plugin for the orchestrator that checks files a build or a
test run left behind.

Protocol (see README.md next to this file):
  stdin   one JSON object: {"action": ..., "parameters": {...},
                            "run": {"id": ..., "workflow_id": ..., "step": ...}}
  stdout  one JSON line:   {"status": "succeeded"|"failed", "outputs": {...}, "message": ...}
  stderr  diagnostics; the orchestrator appends them to logs/agents/<agent>.log
  exit    0 when the check succeeded, 1 when it failed (the answer says why)

Actions:
  exists       path, [kind: file|dir|any], [min_bytes]
               -> outputs {path, kind, bytes}
  json_field   path, pointer (RFC 6901, "" = whole document), [equals]
               -> outputs {value, type}
  count_lines  path, [contains | pattern (Python regex)], [min], [max], [equals]
               -> outputs {lines, total_lines}

Relative paths are resolved against the working directory, which is the project directory
unless the Agent manifest sets `working_dir`. Standard library only.
"""

import json
import os
import re
import sys
import traceback

PLUGIN = "file_checks"


class CheckFailed(Exception):
    """The check ran and its expectation does not hold (or its input is unusable)."""


def log(message):
    """A diagnostic line for the agent log (stderr); stdout is reserved for the answer."""
    print(f"[{PLUGIN}] {message}", file=sys.stderr, flush=True)


# --- parameters -----------------------------------------------------------------------


def required(parameters, name, kind=str):
    if name not in parameters:
        raise CheckFailed(f"missing parameter `{name}`")
    return typed(parameters, name, kind)


def optional(parameters, name, kind, default=None):
    if parameters.get(name) is None:
        return default
    return typed(parameters, name, kind)


def typed(parameters, name, kind):
    value = parameters[name]
    # bool is a subclass of int in Python: never accept true/false as a number.
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise CheckFailed(f"parameter `{name}` must be an integer, got {json.dumps(value)}")
    if kind is str and not isinstance(value, str):
        raise CheckFailed(f"parameter `{name}` must be a string, got {json.dumps(value)}")
    if name == "path" and value == "":
        raise CheckFailed("parameter `path` is empty")
    return value


def same_json(a, b):
    """JSON equality: 1 == 1.0, but true != 1 and "1" != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    return a == b


def json_type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# --- actions --------------------------------------------------------------------------


def action_exists(parameters):
    """The path exists, is of the expected kind and, for files, has at least min_bytes."""
    path = required(parameters, "path")
    kind = optional(parameters, "kind", str, "any")
    if kind not in ("file", "dir", "any"):
        raise CheckFailed(f"parameter `kind` must be file, dir or any, got {json.dumps(kind)}")
    min_bytes = optional(parameters, "min_bytes", int)
    if not os.path.exists(path):
        raise CheckFailed(f"{path} does not exist (in {os.getcwd()})")
    found = "dir" if os.path.isdir(path) else "file"
    if kind != "any" and kind != found:
        raise CheckFailed(f"{path} is a {found}, expected a {kind}")
    size = os.path.getsize(path) if found == "file" else 0
    if min_bytes is not None and size < min_bytes:
        raise CheckFailed(f"{path} has {size} bytes, expected at least {min_bytes}")
    log(f"{path}: {found}, {size} bytes")
    return {"path": path, "kind": found, "bytes": size}, f"{path} exists ({found}, {size} bytes)"


def resolve_pointer(document, pointer):
    """RFC 6901: "" is the whole document, "/a/0/b~1c" walks keys and indexes."""
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        raise CheckFailed(f'pointer {json.dumps(pointer)} must be "" or start with "/"')
    current = document
    walked = ""
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(current, dict):
            if token not in current:
                keys = ", ".join(sorted(current)) or "none"
                raise CheckFailed(f"no key `{token}` at {walked or '/'} (keys: {keys})")
            current = current[token]
        elif isinstance(current, list):
            if not re.fullmatch(r"0|[1-9][0-9]*", token) or int(token) >= len(current):
                raise CheckFailed(
                    f"no index `{token}` at {walked or '/'} (an array of {len(current)})"
                )
            current = current[int(token)]
        else:
            raise CheckFailed(
                f"cannot look up `{token}` in the {json_type(current)} at {walked or '/'}"
            )
        walked += "/" + raw
    return current


def action_json_field(parameters):
    """Reads a JSON file, returns the value at a JSON pointer, optionally compares it."""
    path = required(parameters, "path")
    pointer = required(parameters, "pointer")
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
    except json.JSONDecodeError as err:
        raise CheckFailed(f"{path} is not valid JSON: {err}") from err
    try:
        value = resolve_pointer(document, pointer)
    except CheckFailed as err:
        raise CheckFailed(f"{path}#{pointer}: {err}") from err
    shown = json.dumps(value)
    log(f"{path}#{pointer} = {shown[:200]}")
    outputs = {"value": value, "type": json_type(value)}
    if "equals" in parameters:
        expected = parameters["equals"]
        if not same_json(value, expected):
            raise CheckFailed(
                f"{path}#{pointer} is {shown[:200]}, expected {json.dumps(expected)[:200]}"
            )
        return outputs, f"{path}#{pointer} equals {shown[:200]}"
    return outputs, f"{path}#{pointer} is {shown[:200]}"


def action_count_lines(parameters):
    """Counts the lines of a text file (those containing a text or matching a regex)."""
    path = required(parameters, "path")
    contains = optional(parameters, "contains", str)
    pattern = optional(parameters, "pattern", str)
    if contains is not None and pattern is not None:
        raise CheckFailed("give `contains` or `pattern`, not both")
    try:
        regex = re.compile(pattern) if pattern is not None else None
    except re.error as err:
        raise CheckFailed(f"parameter `pattern` is not a valid regex: {err}") from err
    bounds = {name: optional(parameters, name, int) for name in ("min", "max", "equals")}
    total = counted = 0
    with open(path, encoding="utf-8", errors="replace") as file:
        for line in file:
            total += 1
            line = line.rstrip("\r\n")
            if contains is not None and contains not in line:
                continue
            if regex is not None and not regex.search(line):
                continue
            counted += 1
    what = "lines"
    if contains is not None:
        what = f"lines containing {json.dumps(contains)}"
    elif pattern is not None:
        what = f"lines matching /{pattern}/"
    log(f"{path}: {counted} {what} of {total}")
    outputs = {"lines": counted, "total_lines": total}
    summary = f"{path}: {counted} {what}"
    if bounds["equals"] is not None and counted != bounds["equals"]:
        raise CheckFailed(f"{summary}, expected exactly {bounds['equals']}")
    if bounds["min"] is not None and counted < bounds["min"]:
        raise CheckFailed(f"{summary}, expected at least {bounds['min']}")
    if bounds["max"] is not None and counted > bounds["max"]:
        raise CheckFailed(f"{summary}, expected at most {bounds['max']}")
    return outputs, summary


ACTIONS = {
    "exists": action_exists,
    "json_field": action_json_field,
    "count_lines": action_count_lines,
}


# --- protocol -------------------------------------------------------------------------


def answer(status, message, outputs=None):
    """Writes the answer: the orchestrator reads the last stdout line starting with `{`."""
    print(json.dumps({"status": status, "outputs": outputs or {}, "message": message}), flush=True)
    return 0 if status == "succeeded" else 1


def main():
    text = sys.stdin.read()
    try:
        request = json.loads(text)
    except json.JSONDecodeError as err:
        log(f"unreadable request: {err}: {text[:200]!r}")
        return answer("failed", f"{PLUGIN}: the request on stdin is not JSON: {err}")
    if not isinstance(request, dict):
        return answer("failed", f"{PLUGIN}: the request must be a JSON object")
    action = request.get("action")
    parameters = request.get("parameters") or {}
    run = request.get("run") if isinstance(request.get("run"), dict) else {}
    log(f"{run.get('id', '-')} {run.get('step', '-')}: {action} {json.dumps(parameters)[:300]}")
    handler = ACTIONS.get(action)
    if handler is None:
        return answer(
            "failed",
            f"{PLUGIN} has no action {json.dumps(action)} (its actions: {', '.join(ACTIONS)})",
        )
    if not isinstance(parameters, dict):
        return answer("failed", f"{PLUGIN}: `parameters` must be an object")
    try:
        outputs, message = handler(parameters)
    except CheckFailed as failure:
        log(f"failed: {failure}")
        return answer("failed", str(failure))
    except OSError as err:
        # Missing files, permissions, directories where a file was expected.
        log(f"error: {err}")
        where = f": {err.filename}" if err.filename else ""
        return answer("failed", f"{action}: {err.strerror or err}{where}")
    except Exception as err:  # a bug in the plugin: say so instead of dying silently
        traceback.print_exc(file=sys.stderr)
        return answer("failed", f"{PLUGIN} {action} crashed: {type(err).__name__}: {err}")
    log(f"ok: {message}")
    return answer("succeeded", message, outputs)


if __name__ == "__main__":
    sys.exit(main())
