"""Check the ``](doc.md#anchor)`` links of README.md, CHANGELOG.md and docs/.

Also that no document cites a section sign (U+00A7), and that each ``docs/<doc>.md, "<name>"`` in
the sources starts a heading, a table row or a bold item of it (else exit 1).
"""
import functools
import re
import sys
from pathlib import Path
from typing import List, Set, Tuple

ROOT = Path(__file__).resolve().parents[2]
SECTION = '\u00a7'  # the section sign; docs cite headings by name, not by number
LINK = re.compile(r'\]\(([\w./-]*\.md)?#([^)\s]+)\)')
CITE = re.compile(r'docs/(\w+)\.md`?,?\s+(?:trap\s+)?"([^"\s][^"]*)"')


def anchor(title: str) -> str:
    """Return GitHub's anchor of a heading title."""
    return re.sub(r'[^\w\- ]', '', title.strip().lower()).replace(' ', '-')


@functools.lru_cache(maxsize=None)
def names(path: Path) -> Tuple[Set[str], List[str], Set[str]]:
    """Return a document's anchors, headings and other citable names (read once per run)."""
    anchors, heads, cited, fence = set(), [], set(), False
    for line in path.read_text(encoding='utf-8').splitlines() if path.exists() else []:
        fence ^= line.startswith('```')
        head = None if fence else re.match(r'#+ (.*)', line)
        if head:
            base = key = anchor(head.group(1))
            while key in anchors:  # GitHub numbers repeated headings
                key = f'{base}-{sum(a.startswith(base) for a in anchors)}'
            anchors.add(key)
            heads.append(head.group(1).strip())
        cell = re.match(r'\| ([^|]+?) \|', line)
        cited.update([cell.group(1)] if cell else re.findall(r'\*\*(.+?)\.?\*\*', line))
    return anchors, heads, cited


def main() -> int:
    """Print every broken link or citation; return 1 if there is one."""
    bad: List[str] = []
    names.cache_clear()  # the documents as they are now, on every call
    for doc in [ROOT / 'README.md', ROOT / 'CHANGELOG.md'] + sorted(ROOT.glob('docs/*.md')):
        text = doc.read_text(encoding='utf-8') if doc.exists() else ''
        bad += [f'{doc.relative_to(ROOT)}: cites a section by number'] if SECTION in text else []
        for target, frag in LINK.findall(text):
            if frag not in names(doc.parent / target if target else doc)[0]:
                bad.append(f'{doc.relative_to(ROOT)}: no heading for ({target}#{frag})')
    for src in sorted(ROOT.glob('[!.]*/**/*.py')):
        text = re.sub(r'\s*\n\s*#?\s*', ' ', src.read_text(encoding='utf-8'))
        for stem, name in CITE.findall(text):
            _, heads, cited = names(ROOT / 'docs' / f'{stem}.md')
            word = re.compile(re.escape(name) + r'(?!\w)')
            if name not in cited and not any(map(word.match, heads)):
                bad.append(f'{src.relative_to(ROOT)}: no "{name}" in docs/{stem}.md')
    print('\n'.join(bad) or 'all doc links and citations resolve')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
