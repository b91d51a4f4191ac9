"""``--config FILE.yaml`` of the ``drllm`` commands: files first, and every error naming its file.

jsonargparse reads the files itself, but its errors name no file (a YAML syntax error is placed in
``"<unicode string>"``); each file is read here first, so a bad one is refused naming it and the line.
"""

from __future__ import annotations

import difflib
import os
import re


def configs_first(argv: list[str], options=None) -> list[str]:
    """``argv`` with every ``--config FILE`` moved to the front, each file checked (``check_config``).

    jsonargparse applies arguments in order, so a flag given before ``--config`` was silently replaced by
    the file's value; with the files first, a flag always wins, wherever it stands.

    Raises:
        ValueError: naming the file, for a file that ``check_config`` refuses.
    """
    configs, others, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            configs += [arg, argv[i + 1]]
            check_config(argv[i + 1], options)
            i += 2
            continue
        if arg.startswith("--config="):
            configs.append(arg)
            check_config(arg.split("=", 1)[1], options)
        else:
            others.append(arg)
        i += 1
    return configs + others


def config_files(argv: list[str]) -> list[str]:
    """The ``--config`` files of ``argv``, in order."""
    files = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    return files + [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]


def blame(message: str, argv: list[str]) -> str:
    """``message`` of a refused value prefixed with the config file it came from, if a file set it.

    The value came from a file that sets the key the message names, when no flag sets it too or the
    file's value is the one refused (the files are read first).
    """
    key = re.search(r'Parser key "([^".]+)|^--([\w-]+) expects', message)
    if key is None:
        return message
    name = (key.group(1) or key.group(2)).replace("-", "_")
    got = re.search(r"got (.+)$", message)
    flags = _flag_names(argv)
    holders = []
    for path in config_files(argv):
        data = _read(path) or {}
        if name in data and (name not in flags or (got and str(data[name]) == got.group(1).strip())):
            holders.append(path)
    return f"config file {holders[-1]}: {message}" if holders else message  # the last file wins


def blame_value(message: str, argv: list[str]) -> str:
    """``message`` of a value a command refused, prefixed with the config file that set it.

    The command's checks name the setting and the value (``epochs must be ..., got 0``) but cannot know where
    the value came from. A key that a file sets and no flag overrides is blamed on the last file setting it
    when the message names the key as a whole word and shows the file's value; the key named first wins.
    """
    flags = _flag_names(argv)
    found = []  # (position in the message, file)
    for path in config_files(argv):
        data = _read(path)
        for key, value in data.items() if isinstance(data, dict) else ():
            name = str(key).replace("-", "_")
            if name in flags or not _shows(message, value):
                continue
            hits = [_word(message, s) for s in (name, "--" + name.replace("_", "-"))]
            hits = [h for h in hits if h is not None]
            if hits:
                found.append((min(hits), path))
    if not found:
        return message
    first = min(pos for pos, _ in found)
    return f"config file {[f for pos, f in found if pos == first][-1]}: {message}"


def _flag_names(argv: list[str]) -> set[str]:
    """The flags ``argv`` sets, as keys (``--max-new-tokens=2`` gives ``max_new_tokens``)."""
    return {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}


def _word(message: str, text: str) -> int | None:
    """Where ``text`` first stands in ``message`` as a whole word (not inside a longer name), or None."""
    hit = re.search(rf"(?<![\w-]){re.escape(text)}(?![\w-])", message)
    return hit.start() if hit else None


def _shows(message: str, value) -> bool:
    """Whether ``message`` shows a config value (every item of a list), as YAML or Python spells it."""
    spellings = {True: ("true", "True"), False: ("false", "False"), None: ("null", "None")}
    for item in value if isinstance(value, list) else [value]:
        forms = spellings[item] if item is None or isinstance(item, bool) else (str(item),)
        if all(_word(message, form) is None for form in forms):
            return False
    return True


def check_config(path: str, options=None) -> None:
    """Refuse a config file that is not valid YAML, not a mapping, repeats a key or names no flag.

    Args:
        path: the file (a missing one is left to jsonargparse, which names it).
        options: the command's flag names (``--flag`` without dashes); unknown keys are refused when given.

    Raises:
        ValueError: naming the file, and the line or the key.
    """
    if not os.path.isfile(path):
        return
    data = _read(path)
    if not isinstance(data, dict):
        kind = "nothing" if data is None else f"a {type(data).__name__}"
        raise ValueError(f"config file {path}: expected lines of flag: value (a YAML mapping), found {kind}")
    if options is None:
        return
    for key in data:
        if not isinstance(key, str) or key not in options or key in ("config", "help"):
            close = difflib.get_close_matches(str(key).replace("-", "_"), list(options), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"config file {path}: {key!r} is not a flag of this command{hint}")


def _read(path: str):
    """The YAML of ``path`` (None when it is no file); a repeated key or bad syntax is refused by name."""
    import yaml

    if not os.path.isfile(path):
        return None

    class _Strict(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ValueError(f"config file {path} line {line}: the key {key!r} appears twice")
            seen.add(key)
        return loader.construct_mapping(node, deep)

    _Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    with open(path, encoding="utf-8") as f:
        try:
            return yaml.load(f, Loader=_Strict)  # noqa: S506 - a SafeLoader subclass
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ValueError(f"config file {path}{where} is not valid YAML: {err.problem or err}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from None
