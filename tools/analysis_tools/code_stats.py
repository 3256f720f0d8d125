"""Print docstring density and the largest files and functions of a tree.

Density is the number of docstring and comment lines per line of code, the
figure the project keeps near mmseg's (about 0.4-0.45 in ``tagclip_mmseg/``).
Blank lines count as neither; a code line with a trailing comment counts as
code.

Example::

    python tools/analysis_tools/code_stats.py tagclip_mmseg --largest 10
"""
import argparse
import ast
import io
import tokenize
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple


def docstring_lines(tree: ast.Module) -> Set[int]:
    """Return the line numbers covered by module, class and function docstrings."""
    lines: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(
                    getattr(body[0], 'value', None), ast.Constant) and isinstance(
                        body[0].value.value, str):
                lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def count_lines(source: str, tree: ast.Module) -> Tuple[int, int]:
    """Return ``(doc_lines, code_lines)`` of one Python source and its parsed ``tree``."""
    doc = docstring_lines(tree)
    comment_only: Set[int] = set()
    code: Set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comment_only.add(tok.start[0])
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            code.update(range(tok.start[0], tok.end[0] + 1))
    code -= doc
    comment_only -= code
    return len(doc | comment_only), len(code)


def functions(path: Path, tree: ast.Module) -> Iterator[Tuple[int, str]]:
    """Yield ``(lines, qualified name)`` for every function in a module."""

    def visit(node: ast.AST, prefix: str) -> Iterator[Tuple[int, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f'{prefix}{child.name}'
                yield child.end_lineno - child.lineno + 1, f'{path}:{child.lineno} {name}'
                yield from visit(child, name + '.')
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, f'{prefix}{child.name}.')

    yield from visit(tree, '')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('paths', nargs='+', help='folders or files to measure')
    parser.add_argument('--largest', type=int, default=0,
                        help='also list the N largest files and functions')
    args = parser.parse_args()
    files: List[Path] = []
    for p in map(Path, args.paths):
        files.extend(sorted(p.rglob('*.py')) if p.is_dir() else [p])
    per_dir: Dict[str, List[int]] = defaultdict(lambda: [0, 0])
    sizes: List[Tuple[int, str]] = []
    funcs: List[Tuple[int, str]] = []
    for f in files:
        source = f.read_text(encoding='utf-8')
        tree = ast.parse(source)
        doc, code = count_lines(source, tree)
        per_dir[str(f.parent)][0] += doc
        per_dir[str(f.parent)][1] += code
        sizes.append((len(source.splitlines()), str(f)))
        funcs.extend(functions(f, tree))
    total_doc = sum(d for d, _ in per_dir.values())
    total_code = sum(c for _, c in per_dir.values())
    print(f'{"folder":48} {"doc":>6} {"code":>6} {"density":>8}')
    for folder, (doc, code) in sorted(per_dir.items()):
        print(f'{folder:48} {doc:6d} {code:6d} {doc / max(code, 1):8.2f}')
    print(f'{"total":48} {total_doc:6d} {total_code:6d} {total_doc / max(total_code, 1):8.2f}')
    if args.largest:
        print('\nlargest files (lines):')
        for n, name in sorted(sizes, reverse=True)[:args.largest]:
            print(f'{n:6d}  {name}')
        print('\nlargest functions (lines):')
        for n, name in sorted(funcs, reverse=True)[:args.largest]:
            print(f'{n:6d}  {name}')


if __name__ == '__main__':
    main()
