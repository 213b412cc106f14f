r"""The `hint` view: a short static description of a reference program, without an LLM.

The hint names the algorithms and data structures the program uses and a rough cost, read
off the code by fixed rules, so it says *how* the problem is solved without giving the code.

Rules (the README repeats the table). Comments and string literals are removed first. A
feature is reported when its pattern matches:

| feature                         | Python                                   | C++ / Java                                        |
|---------------------------------|------------------------------------------|---------------------------------------------------|
| sorting                         | `sorted(`, `.sort(`                      | `sort(`, `stable_sort(`, `Arrays.sort`, `Collections.sort` |
| binary search                   | `bisect`, `mid =`                        | `lower_bound`, `upper_bound`, `binary_search`, `binarySearch`, `mid =` |
| a heap / priority queue         | `heapq`, `heappush`, `heappop`, `heapify`| `priority_queue`, `PriorityQueue`                 |
| breadth-first search (a queue)  | `deque(` with `.popleft(`                | `queue<` / `deque<` / `ArrayDeque` with `.front()`/`.poll()` |
| a stack                         | -                                        | `stack<`, `Stack<`                                |
| a hash map                      | `dict(`, `{}`, `Counter(`, `defaultdict(`| `unordered_map`, `HashMap`                        |
| an ordered map                  | -                                        | `map<`, `TreeMap`                                 |
| a set                           | `set(`                                   | `set<`, `multiset<`, `unordered_set`, `HashSet`, `TreeSet` |
| dynamic programming             | a name starting with `dp`                | a name starting with `dp`                         |
| memoised recursion              | `lru_cache`, `@cache`, a name starting with `memo` | a name starting with `memo`            |
| prefix sums                     | a name starting with `pref`/`prefix`, `accumulate` | a name starting with `pref`/`prefix`, `partial_sum` |
| gcd / lcm                       | `gcd`, `lcm`                             | `gcd(`, `__gcd`, `lcm(`                            |
| modular arithmetic              | `10**9+7`, `1000000007`, `998244353`, `MOD`/`mod` | same, and `1e9+7`                        |
| fast modular exponentiation     | `pow(a, b, m)`                           | -                                                 |
| bit manipulation                | `<<`, `>>`, `^`, `&`, `bin(`             | `^`, `(1 << `, `__builtin_*`, `bitset<`           |
| a graph as adjacency lists      | a name starting with `adj`, `graph`, `edges` | same, and `vector<int> g[...]`                |
| union-find (disjoint sets)      | `find(` together with `parent`/`par`     | `find(` together with `parent`/`par`/`dsu`        |
| recursion                       | a function that calls itself (parsed with `ast`) | a function whose body calls its own name  |

Cost: the deepest nesting d of loops (`for`/`while`, comprehensions count as loops; in C++
and Java `for`, `while`, `do`) gives "about O(n^d) steps"; d = 0 gives "no loops". Sorting,
binary search or a heap add "plus log n factors". This is a reading of the code, not a proof.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize

PYTHON = "python"
CPP = "cpp"
JAVA = "java"

_PYTHON_RULES: list[tuple[str, str]] = [
    ("sorting", r"\bsorted\s*\(|\.sort\s*\("),
    ("binary search", r"\bbisect\w*|\bmid\s*=(?!=)"),
    ("a heap / priority queue", r"\bheapq\b|\bheappush\b|\bheappop\b|\bheapify\b"),
    ("breadth-first search (a queue)", r"(?=[\s\S]*\bdeque\s*\()(?=[\s\S]*\.popleft\s*\()"),
    ("a hash map", r"\bdict\s*\(|\{\s*\}|\bCounter\s*\(|\bdefaultdict\s*\("),
    ("a set", r"\bset\s*\("),
    ("dynamic programming", r"\bdp\w*"),
    ("memoised recursion", r"\blru_cache\b|@cache\b|\bmemo\w*"),
    ("prefix sums", r"\bpref\w*|\baccumulate\b"),
    ("gcd / lcm", r"\bgcd\b|\blcm\b"),
    ("modular arithmetic", r"10\s*\*\*\s*9\s*\+\s*7|1000000007|998244353|\bMOD\b|\bmod\b"),
    ("fast modular exponentiation", r"\bpow\s*\([^(),]+,[^(),]+,[^(),]+\)"),
    ("bit manipulation", r"<<|>>|\^|(?<![&])&(?![&])|\bbin\s*\("),
    ("a graph as adjacency lists", r"\badj\w*|\bgraph\b|\bedges\b"),
    ("union-find (disjoint sets)", r"(?=[\s\S]*\bfind\s*\()(?=[\s\S]*\bpar(?:ent)?\b)"),
]

_CFAMILY_RULES: list[tuple[str, str]] = [
    ("sorting", r"\bsort\s*\(|\bstable_sort\s*\(|\bArrays\.sort\b|\bCollections\.sort\b"),
    ("binary search", r"\blower_bound\b|\bupper_bound\b|\bbinary_search\b|\bbinarySearch\b|\bmid\s*=(?!=)"),
    ("a heap / priority queue", r"\bpriority_queue\b|\bPriorityQueue\b"),
    (
        "breadth-first search (a queue)",
        r"(?=[\s\S]*(?:\bqueue\s*<|\bdeque\s*<|\bArrayDeque\b))(?=[\s\S]*(?:\.front\s*\(|\.poll\s*\())",
    ),
    ("a stack", r"\bstack\s*<|\bStack\s*<"),
    ("a hash map", r"\bunordered_map\b|\bHashMap\b"),
    ("an ordered map", r"(?<![\w_])map\s*<|\bTreeMap\b"),
    ("a set", r"(?<![\w_])(?:multi)?set\s*<|\bunordered_set\b|\bHashSet\b|\bTreeSet\b"),
    ("dynamic programming", r"\bdp\w*"),
    ("memoised recursion", r"\bmemo\w*"),
    ("prefix sums", r"\bpref\w*|\bpartial_sum\b"),
    ("gcd / lcm", r"\bgcd\s*\(|\b__gcd\b|\blcm\s*\("),
    ("modular arithmetic", r"1e9\s*\+\s*7|1000000007|998244353|\bMOD\b|\bmod\b"),
    ("bit manipulation", r"\^|\(\s*1(?:LL|ll|ull|ULL|L)?\s*<<|\b__builtin_\w+|\bbitset\s*<"),
    ("a graph as adjacency lists", r"\badj\w*|\bgraph\b|\bedges\b|vector\s*<\s*int\s*>\s*\w+\s*\["),
    ("union-find (disjoint sets)", r"(?=[\s\S]*\bfind\s*\()(?=[\s\S]*\b(?:parent|par|dsu|DSU)\b)"),
]

_LOG_FACTOR_FEATURES = {"sorting", "binary search", "a heap / priority queue"}


# --- cleaning -----------------------------------------------------------------------------------


def _strip_python(code: str) -> str:
    """Python code without comments and string literals (strings become "")."""
    line_starts = [0]
    for line in code.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))

    def offset(position: tuple[int, int]) -> int:
        row, column = position
        return line_starts[row - 1] + column

    try:
        spans = [
            (offset(token.start), offset(token.end), "" if token.type == tokenize.COMMENT else '""')
            for token in tokenize.generate_tokens(io.StringIO(code).readline)
            if token.type in (tokenize.COMMENT, tokenize.STRING)
        ]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return re.sub(r"#[^\n]*", "", code)
    pieces, last = [], 0
    for start, end, replacement in spans:
        pieces += [code[last:start], replacement]
        last = end
    return "".join(pieces) + code[last:]


_CFAMILY_NOISE = re.compile(r"//[^\n]*|/\*[\s\S]*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'")


def _strip_cfamily(code: str) -> str:
    """C++/Java code without comments, string and char literals (newlines kept)."""
    return _CFAMILY_NOISE.sub(lambda m: "" if m.group(0).startswith("/") else '""', code)


# --- loop nesting -------------------------------------------------------------------------------


def _python_loop_depth(code: str) -> int:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return _python_loop_depth_by_indent(code)

    def depth(node: ast.AST) -> int:
        own = 1 if isinstance(node, ast.For | ast.While | ast.AsyncFor) else 0
        if isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            own = len(node.generators)
        return own + max((depth(child) for child in ast.iter_child_nodes(node)), default=0)

    return depth(tree)


def _python_loop_depth_by_indent(code: str) -> int:
    """Fallback for code `ast` cannot parse (e.g. Python 2): loop headers counted by indentation."""
    open_loops: list[int] = []  # indentation of the loop headers enclosing the current line
    deepest = 0
    for line in code.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        while open_loops and indent <= open_loops[-1]:
            open_loops.pop()
        if re.match(r"\s*(for|while)\b", line):
            open_loops.append(indent)
            deepest = max(deepest, len(open_loops))
    return deepest


def _matching(text: str, open_at: int, opening: str, closing: str) -> int:
    """Index of the bracket closing text[open_at] (or len(text) when it never closes)."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == opening:
            depth += 1
        elif text[i] == closing:
            depth -= 1
            if depth == 0:
                return i
    return len(text)


def _statement_end(text: str, start: int) -> int:
    """End (exclusive) of the statement starting at `start`: a `{...}` block or up to `;`."""
    i = start
    while i < len(text) and text[i].isspace():
        i += 1
    if i < len(text) and text[i] == "{":
        return _matching(text, i, "{", "}") + 1
    parens = braces = 0
    while i < len(text):
        char = text[i]
        if char == "(":
            parens += 1
        elif char == ")":
            parens -= 1
        elif char == "{":
            braces += 1
        elif char == "}":
            braces -= 1
            if braces == 0 and parens == 0:
                return i + 1
        elif char == ";" and parens == 0 and braces == 0:
            return i + 1
        i += 1
    return len(text)


_CFAMILY_LOOP = re.compile(r"\b(for|while|do)\b")


def _cfamily_loop_depth(text: str) -> int:
    deepest = 0
    position = 0
    while True:
        match = _CFAMILY_LOOP.search(text, position)
        if match is None:
            return deepest
        body_start = match.end()
        if match.group(1) != "do":
            paren = text.find("(", match.end())
            if paren < 0:
                return deepest
            body_start = _matching(text, paren, "(", ")") + 1
        body_end = _statement_end(text, body_start)
        deepest = max(deepest, 1 + _cfamily_loop_depth(text[body_start:body_end]))
        position = max(body_end, match.end())


# --- recursion ----------------------------------------------------------------------------------


def _python_recursive_functions(code: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id == node.name:
                    return True
    return False


_CFAMILY_FUNCTION = re.compile(r"\b([A-Za-z_]\w*)\s*\([^;{}()]*\)\s*(?:const\s*)?\{")
_NOT_FUNCTIONS = {"if", "for", "while", "switch", "catch", "return", "main", "sizeof"}


def _cfamily_recursive_functions(text: str) -> bool:
    for match in _CFAMILY_FUNCTION.finditer(text):
        name = match.group(1)
        if name in _NOT_FUNCTIONS:
            continue
        body = text[match.end() : _matching(text, match.end() - 1, "{", "}")]
        if re.search(rf"\b{re.escape(name)}\s*\(", body):
            return True
    return False


# --- the hint -----------------------------------------------------------------------------------


def guess_language(code: str) -> str:
    if re.search(r"#include|\bstd::|\bint\s+main\s*\(", code):
        return CPP
    if re.search(r"\bpublic\s+static\s+void\s+main\b|\bimport\s+java\.", code):
        return JAVA
    return PYTHON


def code_features(code: str, language: str | None = None) -> tuple[list[str], int]:
    """(features in rule order, loop nesting depth) of a program."""
    language = language or guess_language(code)
    if language.startswith(PYTHON):
        text = _strip_python(code)
        rules, depth, recursive = _PYTHON_RULES, _python_loop_depth(code), _python_recursive_functions(code)
    else:
        text = _strip_cfamily(code)
        rules, depth, recursive = _CFAMILY_RULES, _cfamily_loop_depth(text), _cfamily_recursive_functions(text)
    features = [name for name, pattern in rules if re.search(pattern, text)]
    if recursive:
        features.append("recursion")
    return features, depth


def describe_code(code: str, language: str | None = None) -> str:
    """The hint view text for a reference program."""
    features, depth = code_features(code, language)
    if features:
        uses = "The reference solution uses " + ", ".join(features) + "."
    else:
        uses = "The reference solution uses no special algorithm or data structure: a direct computation."
    if depth == 0:
        cost = "It has no loops."
    else:
        power = "n" if depth == 1 else f"n^{depth}"
        cost = f"Its loops nest {depth} deep, so it takes about O({power}) steps"
        if _LOG_FACTOR_FEATURES.intersection(features):
            cost += ", plus log n factors from " + " and ".join(f for f in features if f in _LOG_FACTOR_FEATURES)
        cost += "."
    return f"{uses} {cost}"
