"""`bootc completion bash|zsh|fish`: shell completion scripts made from the parser.

The scripts are generated from the argparse tree itself, so they never fall
behind the command line: verbs, nested verbs and each verb's options.
"""

from __future__ import annotations

import argparse
import shlex

# Verb path (e.g. ("image", "list")) -> its sub-verbs and options.
Tree = dict[tuple[str, ...], tuple[list[str], list[str]]]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_tree(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Tree:
    children = _subparsers(parser)
    options = sorted(
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    )
    tree: Tree = {path: (sorted(children), options)}
    for name, child in children.items():
        tree.update(command_tree(child, (*path, name)))
    return tree


def _bash(tree: Tree) -> str:
    cases = []
    for path, (verbs, options) in sorted(tree.items()):
        key = " ".join(path)
        words = shlex.quote(" ".join(verbs + options))
        cases.append(f"        {shlex.quote(key)}) words={words} ;;")
    return "\n".join(
        [
            "# bash completion for bootc (pybootc)",
            "_bootc() {",
            "    local cur=${COMP_WORDS[COMP_CWORD]} path='' word words i",
            "    for ((i = 1; i < COMP_CWORD; i++)); do",
            "        word=${COMP_WORDS[i]}",
            "        [[ $word == --sysroot ]] && { ((i++)); continue; }",
            "        [[ $word == -* ]] && continue",
            "        path=${path:+$path }$word",
            "    done",
            '    case "$path" in',
            *cases,
            "        *) words='' ;;",
            "    esac",
            '    COMPREPLY=($(compgen -W "$words" -- "$cur"))',
            "}",
            "complete -o default -F _bootc bootc",
            "",
        ]
    )


def _fish(tree: Tree) -> str:
    lines = ["# fish completion for bootc (pybootc)"]
    for path, (verbs, options) in sorted(tree.items()):
        if path:
            condition = " and ".join(f"__fish_seen_subcommand_from {p}" for p in path)
        else:
            condition = "__fish_use_subcommand"
        for verb in verbs:
            lines.append(f"complete -c bootc -f -n {shlex.quote(condition)} -a {verb}")
        for option in options:
            flag = option.removeprefix("--")
            lines.append(f"complete -c bootc -n {shlex.quote(condition)} -l {flag}")
    return "\n".join(lines) + "\n"


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    tree = command_tree(parser)
    if shell == "fish":
        return _fish(tree)
    script = _bash(tree)
    if shell == "zsh":
        # zsh runs bash completion functions through bashcompinit.
        return "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script
