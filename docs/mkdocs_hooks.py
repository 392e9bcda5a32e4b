"""mkdocs hook: pages listed in the nav that have not been written yet build as a short placeholder.

The placeholder says so plainly; once the real page exists in ``docs/`` it is used instead. Every other missing
page or broken link still fails ``mkdocs build --strict``.
"""

from __future__ import annotations

from mkdocs.structure.files import File, Files

PENDING = {
    "demo.md": "The demo model",
    "reliability.md": "Reliability",
}


def on_files(files: Files, config) -> Files:
    for src, title in PENDING.items():
        if files.get_file_from_path(src) is None:
            text = f"# {title}\n\nThis page has not been written yet.\n"
            files.append(File.generated(config, src, content=text))
    return files
