"""Reads Python sources with this interpreter's own `ast` module, without importing or running them.

Input (stdin, JSON): {"files": [{"path": "pkg/mod.py", "text": "..."}]}
Output (stdout, JSON): {"modules": {"pkg/mod.py": {"statements": [...]}
                                   | {"error": {"line": 1, "column": 1, "message": "..."}}}}

Each module is summarized by the top-level statements that bind names (what runplane needs to
find a handler and read its parameters; `signature.rs` reads the summary). The summary is built
without recursion, so deeply nested code cannot overflow this script's stack; code that is too
deep or too large for the parser itself is reported as an error of its file.
"""

import ast
import json
import sys

TOO_DEEP = (RecursionError, MemoryError)
MAX_MEMORY_BYTES = 4 << 30


def parameters_of(args):
    positional = args.posonlyargs + args.args
    first_default = len(positional) - len(args.defaults)
    parameters = []
    for index, arg in enumerate(positional):
        kind = "positional_only" if index < len(args.posonlyargs) else "positional_or_keyword"
        parameters.append({"name": arg.arg, "kind": kind, "has_default": index >= first_default})
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        parameters.append({"name": arg.arg, "kind": "keyword_only", "has_default": default is not None})
    return parameters


def functions_in(*bodies):
    """Names of the functions defined directly in these statement lists."""
    return [
        stmt.name
        for body in bodies
        for stmt in body
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def names_bound_by(targets):
    """Names an assignment binds through names, tuples, lists and starred targets."""
    names, pending = [], list(targets)
    while pending:
        target = pending.pop()
        if isinstance(target, ast.Name):
            names.append(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            pending.extend(target.elts)
        elif isinstance(target, ast.Starred):
            pending.append(target.value)
    return names


def aliases(names):
    return [{"name": alias.name, "asname": alias.asname} for alias in names]


def summarize(stmt):
    line = stmt.lineno
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = stmt.args
        return {
            "kind": "def",
            "line": line,
            "name": stmt.name,
            "is_async": isinstance(stmt, ast.AsyncFunctionDef),
            "parameters": parameters_of(args),
            "var_positional": args.vararg is not None,
            "var_keyword": args.kwarg is not None,
            "defines": functions_in(stmt.body),
        }
    if isinstance(stmt, ast.ClassDef):
        return {"kind": "class", "line": line, "name": stmt.name, "defines": functions_in(stmt.body)}
    if isinstance(stmt, ast.ImportFrom):
        return {
            "kind": "import_from",
            "line": line,
            "module": stmt.module,
            "level": stmt.level or 0,
            "names": aliases(stmt.names),
        }
    if isinstance(stmt, ast.Import):
        return {"kind": "import", "line": line, "names": aliases(stmt.names)}
    if isinstance(stmt, ast.Assign):
        return {"kind": "assign", "line": line, "names": names_bound_by(stmt.targets)}
    if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        return {"kind": "assign", "line": line, "names": names_bound_by([stmt.target])}
    if isinstance(stmt, ast.AugAssign):
        return {"kind": "assign", "line": line, "names": names_bound_by([stmt.target])}
    if isinstance(stmt, ast.If):
        return {"kind": "block", "line": line, "block": "if", "defines": functions_in(stmt.body, stmt.orelse)}
    if isinstance(stmt, ast.Try):
        defines = functions_in(stmt.body, stmt.orelse, stmt.finalbody)
        return {"kind": "block", "line": line, "block": "try", "defines": defines}
    if isinstance(stmt, ast.With):
        return {"kind": "block", "line": line, "block": "with", "defines": functions_in(stmt.body)}
    return None


def parse(path, text):
    return ast.parse(text, filename=path)


def first_too_deep_line(path, text):
    """The first line at which the code's beginning is too deep for the parser (bisection over
    the beginnings of the file: cut before the deep code they parse or fail otherwise)."""
    lines = text.splitlines(keepends=True)
    low, high = 1, len(lines)
    while low < high:
        middle = (low + high) // 2
        try:
            parse(path, "".join(lines[:middle]))
            too_deep = False
        except TOO_DEEP:
            too_deep = True
        except (SyntaxError, ValueError):
            too_deep = False
        if too_deep:
            high = middle
        else:
            low = middle + 1
    return low


def problem(line, column, message):
    return {"error": {"line": max(line or 1, 1), "column": max(column or 1, 1), "message": message}}


def inspect(path, text):
    if "\0" in text:
        before = text[: text.index("\0")]
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        return problem(line, column, "source code cannot contain null bytes")
    try:
        module = parse(path, text)
    except SyntaxError as error:
        return problem(error.lineno, error.offset, error.msg)
    except TOO_DEEP as error:
        kind = type(error).__name__
        line = first_too_deep_line(path, text)
        return problem(
            line,
            1,
            f"the code nests too deeply (or is too large) for Python to parse it ({kind}); split deeply nested expressions or blocks",
        )
    statements = [summary for summary in map(summarize, module.body) if summary is not None]
    return {"statements": statements}


def limit_memory():
    """Code too large to parse fails with a MemoryError rather than exhausting the machine."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MAX_MEMORY_BYTES, MAX_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass


def main():
    limit_memory()
    request = json.load(sys.stdin)
    modules = {}
    for file in request["files"]:
        modules[file["path"]] = inspect(file["path"], file["text"])
    json.dump({"modules": modules}, sys.stdout)


main()
