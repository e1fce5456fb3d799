"""``steer COMMAND [ARGS...]`` (or ``python -m steer ...``): one name for steer's command lines.

Each command is one line of ``COMMANDS``: its one-line summary and where its ``main(argv) -> int``
lives, a module of the package (``steer.report:main``) or a script of the checkout
(``experiments/paper.py:main``, ``run.py:main``), imported only when the command runs. A command
whose module is not there (``serve`` and ``generate`` before their packages land) is left out of the
listing and refused with one line. ``steer run [overrides]`` is ``python run.py [overrides]``.
"""

from __future__ import annotations

import importlib
import importlib.util
import runpy
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Command:
    summary: str
    # "package.module:function" or "path/of/script.py:function" (relative to the checkout): its
    # main(argv) -> int; or "path/of/script.py" alone: the script run as __main__ with the arguments
    # in sys.argv (a Hydra entry point, which finds its steer/conf/ beside it).
    target: str

    @property
    def location(self) -> str:
        return self.target.partition(":")[0]

    def available(self) -> bool:
        """Whether its module or script is there (looked up as a file: nothing is imported)."""
        if self.location.endswith(".py"):
            return (REPO / self.location).is_file()
        base = REPO.joinpath(*self.location.split("."))
        return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()

    def load(self) -> Callable[[list[str]], int]:
        location, _, name = self.target.partition(":")
        if location.endswith(".py"):
            spec = importlib.util.spec_from_file_location(f"steer_script_{Path(location).stem}", REPO / location)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up there
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(location)
        return getattr(module, name)


COMMANDS: dict[str, Command] = {
    "run": Command(
        "a run: train -> sweep -> fit -> judge, from Hydra overrides (python run.py)", "steer.stages.command:main"
    ),
    "report": Command(
        "paper tables, figures and the preference-utility front of finished runs", "steer.report.__main__:main"
    ),
    "export": Command(
        "a trained run as a PEFT adapter, merged model, steering vector or GGUF", "steer.export.__main__:main"
    ),
    "datacheck": Command(
        "a data set as the unsteered model sees it (pairs, lengths, P(A_p)+P(A_n))", "steer.datacheck:main"
    ),
    "paper": Command(
        "the runs and report of a paper table or figure (experiments/paper.py)", "experiments/paper.py:main"
    ),
    "plan": Command(
        "what a preset's runs would cost: tokens, GPU-hours, judge calls", "experiments/paper.py:plan_main"
    ),
    "serve": Command("an OpenAI-compatible server of trained runs, m chosen per request", "steer.serve.__main__:main"),
    "generate": Command("completions of a run at several m, side by side", "steer.generate.__main__:main"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: steer COMMAND [ARGS...]   (steer COMMAND --help for its options)",
        "",
        "Commands:",
    ]
    lines += [f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items() if c.available()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    command = COMMANDS.get(name)
    if command is None or not command.available():
        known = ", ".join(n for n, c in COMMANDS.items() if c.available())
        print(f"steer: unknown command {name!r} (commands: {known}; steer --help)", file=sys.stderr)
        return 2
    if ":" not in command.target:
        sys.argv = [str(REPO / command.target), *rest]
        runpy.run_path(sys.argv[0], run_name="__main__")
        return 0
    sys.argv[0] = f"steer {name}"  # argparse names the command in its usage lines
    return command.load()(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
