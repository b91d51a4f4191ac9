"""The ``drllm`` command: each subcommand is the real function of its package, registered once.

    drllm generate   drllm.cli.generate.generate           (torch + transformers only)
    drllm search     drllm.search.runner.run_search
    drllm train      drllm.train.trainer.train_routers       (the ``train`` extra: Lightning)
    drllm eval       drllm.evaluation.evaluate.run_eval
    drllm demo       drllm.cli.demo.run_demo
    drllm analyze    drllm.evaluation.analysis.run_analysis
    drllm signal     drllm.evaluation.signal.run_signal
    drllm stand-ins  drllm.cli.stand_ins.fit_stand_ins       (linear stand-ins, damped repeats)

jsonargparse turns each function's signature and docstring into flags and ``--help``; every subcommand
takes ``--config FILE.yaml`` with the same keys (``configs/`` holds one per command). A function is
imported only when its subcommand runs, so ``drllm generate`` never imports Lightning.

Parameters that only Python callers can pass (a loaded model, its tokenizer) are not flags. Three
spellings people type are accepted on top of jsonargparse's own, which has no option for them:
``--batch-size`` for ``--batch_size``, a bare ``--stream`` for ``--stream true``, and comma lists
(``--budgets -0.5,0,1``) beside ``--budgets [-0.5,0,1]``. They are adapted from the parser's own actions.
"""

from __future__ import annotations

import difflib
import importlib
import re
import sys

from drllm.cli.config_files import blame, blame_value, configs_first
from drllm.router import DEFAULT_MODEL
from drllm.search.progress import configure_logging

COMMANDS: dict[str, str] = {
    "generate": "drllm.cli.generate:generate",
    "search": "drllm.search.runner:run_search",
    "train": "drllm.train.trainer:train_routers",
    "eval": "drllm.evaluation.evaluate:run_eval",
    "demo": "drllm.cli.demo:run_demo",
    "analyze": "drllm.evaluation.analysis:run_analysis",
    "signal": "drllm.evaluation.signal:run_signal",
    "stand-ins": "drllm.cli.stand_ins:fit_stand_ins",
}
RESUMABLE = {"search", "train", "demo"}  # commands whose finished work survives an interrupt
PYTHON_ONLY = {"tokenizer", "routed"}  # objects handed over from Python, never flags
# the pip extra a command needs
EXTRAS = {"train": "train", "eval": "eval", "demo": "train", "analyze": "eval"}
_TRUE_FALSE = {"true", "false", "yes", "no", "1", "0"}
# exit codes: 2 for a bad command line, argument or input file; 1 for a failure while it ran (a file that
# cannot be written, a full disk, a lock held by another run)
USAGE_ERROR, RUNTIME_ERROR = 2, 1


def command_function(name: str):
    """The real function behind ``drllm <name>`` (imported now).

    Raises:
        ImportError: naming the pip extra to install when the command's dependencies are missing.
    """
    module, function = COMMANDS[name].split(":")
    try:
        return getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as err:
        extra = EXTRAS.get(name)
        hint = f"; install it with: pip install 'drllm[{extra}]'" if extra else ""
        raise ImportError(f"drllm {name} needs the package {err.name!r}{hint}") from err


def command_parser(name: str):
    """A jsonargparse parser for one subcommand, built from its function's signature and docstring."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    function = command_function(name)
    parser = ArgumentParser(
        prog=f"drllm {name}", description=_summary(function), exit_on_error=False, allow_abbrev=False
    )
    parser.add_argument(
        "--config", action=ActionConfigFile, help="a YAML file with the same keys as the flags"
    )
    parser.add_function_arguments(function, skip=PYTHON_ONLY)
    options = _option_names(parser)
    if "model" in options:  # none named: the routers' own base model, else the embedded default
        parser.set_defaults(model=None)
        options["model"].required = False
    plain_help = parser.format_help
    parser.format_help = lambda: plain_text(
        re.sub(r"--(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), plain_help())
    )
    return parser


def plain_text(text: str) -> str:
    """Docstring markup made plain for a terminal: ````x```` -> ``x``, ``:class:`X``` -> ``X``."""
    text = re.sub(r":(?:class|func|meth|mod|data|attr):`~?([^`]+)`", r"\1", text)
    return re.sub(r"``([^`]+)``", r"\1", text)


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean X?)`` for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _summary(function) -> str:
    return (function.__doc__ or "").strip().split("\n", 1)[0]


def _option_names(parser) -> dict:
    """``{name: action}`` for every ``--name`` option of a parser."""
    return {
        opt[2:]: action for action in parser._actions for opt in action.option_strings if opt.startswith("--")
    }


def adapt_argv(parser, argv: list[str]) -> list[str]:
    """Rewrite the three extra spellings (see the module docstring) into jsonargparse's own."""
    options = _option_names(parser)
    for arg in argv:  # a flag no option has: name the closest one (argparse would only list usage)
        if arg.startswith("--") and len(arg) > 2:
            name = arg[2:].split("=", 1)[0].replace("-", "_").removesuffix("+")
            if name not in options and name.split(".")[0] not in options:
                close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
                hint = f" (did you mean --{close[0].replace('_', '-')}?)" if close else ""
                raise ValueError(f"unknown flag --{name.replace('_', '-')}{hint}")
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            out.append(arg)
            i += 1
            continue
        name, eq, value = arg[2:].partition("=")
        name = name.replace("-", "_") if name.replace("-", "_") in options else name
        kind = str(getattr(options.get(name), "_typehint", ""))
        following = argv[i + 1] if i + 1 < len(argv) else None
        if kind in ("<class 'bool'>", "bool", "bool | None", "typing.Optional[bool]") and not eq:
            if following is None or following.lower() not in _TRUE_FALSE:
                value, eq = "true", "="
            else:
                value, eq, i = following, "=", i + 1
        elif not eq and following is not None and following.startswith("-") and _is_number(following):
            value, eq, i = following, "=", i + 1  # -1e308: argparse would read it as a flag
        elif ("list[" in kind or "tuple[" in kind or "Sequence[" in kind) and not value.startswith("["):
            if not eq and following is not None and not following.startswith("["):
                value, eq, i = following, "=", i + 1
            if eq and value and not value.startswith("["):
                value = f"[{value}]"
        out.append(f"--{name}{eq}{value}")
        i += 1
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _top_help() -> str:
    lines = [
        "usage: drllm {" + ",".join(COMMANDS) + "} [--help] [FLAGS]   (drllm --version)",
        "",
        "commands:",
    ]
    for name in COMMANDS:
        try:
            text = _summary(command_function(name))
        except ImportError as err:
            text = f"(unavailable: {err})"
        lines.append(f"  {name:<9} {text}")
    lines.append("\n`drllm COMMAND --help` lists a command's flags.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``drllm`` console script (returns None: ``sys.exit(main())`` means success)."""
    from jsonargparse import ArgumentError

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return
    if argv[0] in ("-V", "--version"):
        print(f"drllm {_version()}")
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        _fail(f"unknown command {name!r}{did_you_mean(name, COMMANDS)}; commands: {', '.join(COMMANDS)}")
    rest, level = _verbosity(rest)
    try:
        parser = command_parser(name)
        rest = configs_first(rest, _option_names(parser))  # a flag overrides the file wherever it stands
        cfg = parser.parse_args(adapt_argv(parser, rest))
    except (ImportError, ValueError) as err:
        _fail(f"{name}: {err}" if isinstance(err, ValueError) else str(err))
    except ArgumentError as err:
        _fail(f"{name}: {blame(_argument_line(err), rest)}")  # a value a config file set names the file
    kwargs = {k: v for k, v in cfg.as_dict().items() if k != "config"}
    configure_logging(level)
    from drllm.search.records import OutputLockedError

    try:
        if "model" in kwargs and kwargs["model"] is None:
            kwargs["model"] = default_model(kwargs.get("routers"))
        result = command_function(name)(**kwargs)
        print_result(name, result)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:  # a bad argument or input file
        _fail(blame_value(_one_line(err), rest))  # a value a config file set names the file
    except (OSError, OutputLockedError, RuntimeError) as err:  # files, disks, locks, state: runtime
        _fail(_one_line(err), RUNTIME_ERROR)
    except KeyboardInterrupt:
        _close_bars()
        kept = (
            "what it finished is kept, and the same command continues from it"
            if name in RESUMABLE
            else "nothing was written"
        )
        print(f"drllm: {name} interrupted; {kept}", file=sys.stderr)
        raise SystemExit(130) from None


def default_model(routers) -> str:
    """The model of a command given none: the one ``routers`` record (like peft's auto classes), else ours."""
    if routers is None:
        return DEFAULT_MODEL
    from drllm.router.auto import base_model_of

    return base_model_of(routers)


def print_result(name: str, result) -> None:
    """A command's result on stdout (progress and logs go to stderr): a table for eval, JSON otherwise."""
    import json

    if name in ("generate", "demo") or result is None:
        return  # generate prints its completion itself; the demo's report is a file it names
    if name == "eval":
        from drllm.evaluation.report import markdown_table

        layers = max((int(round(r.layers)) for r in result if r.method == "base"), default=0)
        print(markdown_table(result, layers), end="")
        return
    shown = {k: v for k, v in result.items() if k != "history"} if isinstance(result, dict) else result
    print(json.dumps(shown, indent=2, default=str))


def _argument_line(err: Exception) -> str:
    """The multi-line type error of jsonargparse as one line: the flag, what it expects, what it got."""
    import re

    text = str(err)
    key = re.search(r'Parser key "([^"]+)"', text)
    got = re.search(r"(?:Given|Got) value: (.+)", text)
    wanted = [t for t in dict.fromkeys(re.findall(r"Expected a <class '(\w+)'>", text)) if t != "NoneType"]
    if not (key and got and wanted):
        return " ".join(line.strip() for line in text.splitlines() if line.strip())
    flag = "--" + key.group(1).replace("_", "-")
    return f"{flag} expects {' or '.join(wanted)} values, got {got.group(1).strip()}"


def _one_line(err: Exception) -> str:
    """The message of a refused input, a file problem or a lock (``strerror: filename`` for OS errors)."""
    if not isinstance(err, OSError) or not err.strerror:
        return str(err)
    return f"{err.strerror}: {err.filename}" if err.filename else err.strerror


def _close_bars() -> None:
    """Close the progress bars a failed command left open, so its error starts on a line of its own."""
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("drllm")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _fail(message: str, code: int = USAGE_ERROR):
    _close_bars()
    print(f"drllm: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _verbosity(argv: list[str]) -> tuple[list[str], int]:
    """``argv`` without ``-q``/``--quiet`` and ``-v``/``--verbose``, and the logging level they ask for."""
    import logging

    quiet = sum(a in ("-q", "--quiet") for a in argv)
    verbose = sum(a in ("-v", "--verbose") for a in argv)
    level = logging.WARNING if quiet > verbose else logging.DEBUG if verbose > quiet else logging.INFO
    return [a for a in argv if a not in ("-q", "--quiet", "-v", "--verbose")], level


if __name__ == "__main__":
    main()
