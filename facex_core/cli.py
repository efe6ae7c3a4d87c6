"""The `facex` command. Subcommands are a table: name -> (module, help); each module exposes
`configure(parser)` and `run(args) -> int`, and is imported only when its subcommand runs, so
`facex init` needs no training packages."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "init": ("facex_core.checkpoint", "write a fresh FaceX checkpoint (zero FRC output, initialised adapters)"),
    "prepare": ("facex_core.train.prepare", "turn face videos or frame folders into a training cache"),
    "train": ("facex_core.train.trainer", "train FaceX adapters and the FRC bank (accelerate + diffusers)"),
    "export": ("facex_core.train.export", "export a training state to a FaceX checkpoint"),
    "evaluate": ("facex_core.evaluate.cli", "compute the paper's metrics on generated / reference images"),
}


def _module(name: str):
    module_name = SUBCOMMANDS[name][0]
    if __package__ and __package__ != "facex_core":  # imported as part of the ComfyUI pack
        module_name = __package__ + module_name[len("facex_core"):]
    return importlib.import_module(module_name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="facex", description="FaceX: generalist face editing tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name = argv[0]
    module = _module(name)
    cmd_parser = argparse.ArgumentParser(prog=f"facex {name}", description=SUBCOMMANDS[name][1])
    module.configure(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
