#!/usr/bin/env python3
"""Fail when the package's declared rust-version is older than what a locked dependency of
the library declares (its normal and build dependencies, transitively; dev-dependencies,
the benchmark member and `cfg(loom)`-only dependencies are not part of what users build).

No older toolchain can be installed here, so the declared minimum is checked against the
lock file instead of by building with it.
usage: python3 .ci/rust-version.py   (from the repository root; needs cargo)
"""
import json
import subprocess
import sys

PACKAGE = "ebb-cache"


def version(text):
    return tuple(int(part) for part in text.split("."))


def main():
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    packages = {p["id"]: p for p in metadata["packages"]}
    nodes = {n["id"]: n for n in metadata["resolve"]["nodes"]}
    root = next(p for p in metadata["packages"] if p["name"] == PACKAGE)
    declared = root.get("rust_version")
    if not declared:
        print(f"{PACKAGE}: no rust-version declared")
        return 1

    def built_by_users(dep):
        return any(
            kind["kind"] in (None, "build") and kind["target"] != "cfg(loom)"
            for kind in dep["dep_kinds"]
        )

    seen, todo, needs = set(), [root["id"]], []
    while todo:
        node = nodes[todo.pop()]
        for dep in node["deps"]:
            if dep["pkg"] in seen or not built_by_users(dep):
                continue
            seen.add(dep["pkg"])
            todo.append(dep["pkg"])
            package = packages[dep["pkg"]]
            if package.get("rust_version"):
                needs.append((version(package["rust_version"]), package["name"], package["version"]))
    needs.sort(reverse=True)
    highest = needs[0] if needs else ((0,), "nothing", "")
    if version(declared) < highest[0]:
        print(
            f"{PACKAGE}: rust-version {declared} is older than {highest[1]} {highest[2]} needs "
            f"({'.'.join(map(str, highest[0]))}); raise rust-version in Cargo.toml"
        )
        return 1
    print(
        f"{PACKAGE}: rust-version {declared} covers every locked dependency "
        f"(the highest: {highest[1]} {highest[2]}, {'.'.join(map(str, highest[0]))})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
