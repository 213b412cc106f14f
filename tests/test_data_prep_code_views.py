"""Code views and code readers: the static hint rules, program extraction, reference choice, tests."""

import base64
import json
import pickle
import zlib

import pytest

from verl_avsd.data_prep.code_hint import code_features, describe_code, guess_language
from verl_avsd.data_prep.code_prep import code_views
from verl_avsd.data_prep.code_readers import decode_livecodebench_tests, read_tests
from verl_avsd.data_prep.code_solutions import (
    Solution,
    better_solution,
    detect_solutions_format,
    last_code_block,
    normalize_language,
    normalize_problem_id,
)
from verl_avsd.data_prep.errors import BadInputError
from verl_avsd.data_prep.records import Record

PY_DP_BFS = """
from collections import deque
import sys
MOD = 10**9 + 7
def main():
    n = int(input())  # sorted( in a comment is ignored
    a = sorted(map(int, input().split()))
    dp = [0] * (n + 1)
    for i in range(n):
        for j in range(i):
            dp[i] = (dp[i] + dp[j]) % MOD
    q = deque([0])
    while q:
        u = q.popleft()
    print("heapq in a string is ignored", dp[n - 1])
main()
"""

CPP_GRAPH = """
#include <bits/stdc++.h>
using namespace std;
vector<int> adj[200005];
int dfs(int u, int p) { int s = 1; for (int v : adj[u]) if (v != p) s += dfs(v, u); return s; }
int main() {
    int n; cin >> n;
    vector<long long> a(n);
    for (auto &x : a) cin >> x;
    sort(a.begin(), a.end());          // priority_queue only in a comment
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (a[i] + a[j] > 0) { for (int k = 0; k < 3; k++) cout << 1 << endl; }
    printf("map<int,int> only in a string");
}
"""


def test_python_hint_rules_and_loop_depth():
    features, depth = code_features(PY_DP_BFS, "python")
    assert features == ["sorting", "breadth-first search (a queue)", "dynamic programming", "modular arithmetic"]
    assert depth == 2


def test_cpp_hint_rules_ignore_comments_and_strings():
    features, depth = code_features(CPP_GRAPH, "cpp")
    assert features == ["sorting", "a graph as adjacency lists", "recursion"]
    assert depth == 3  # for / for / braced for, without braces on the outer two


def test_cpp_cin_cout_are_not_bit_manipulation():
    features, _ = code_features("int main(){int a,b;cin>>a>>b;cout<<a+b<<endl;}", "cpp")
    assert "bit manipulation" not in features
    features, _ = code_features("int main(){int m=(1<<20);long x=a^b;}", "cpp")
    assert "bit manipulation" in features


@pytest.mark.parametrize(
    "code, language, feature",
    [
        ("import heapq\nh=[]\nheapq.heappush(h,1)", "python", "a heap / priority queue"),
        ("from bisect import bisect_left\nprint(bisect_left([1],1))", "python", "binary search"),
        (
            "from functools import lru_cache\n@lru_cache(None)\ndef f(n):\n    return 1 if n < 2 else f(n-1)+f(n-2)",
            "python",
            "memoised recursion",
        ),
        ("from math import gcd\nprint(gcd(4, 6))", "python", "gcd / lcm"),
        ("print(pow(2, 100, 10**9+7))", "python", "fast modular exponentiation"),
        ("from itertools import accumulate\np=list(accumulate([1,2]))", "python", "prefix sums"),
        ("x = 5\nprint(x >> 1, x & 1)", "python", "bit manipulation"),
        (
            "parent=list(range(5))\ndef find(x):\n    return x if parent[x]==x else find(parent[x])",
            "python",
            "union-find (disjoint sets)",
        ),
        ("int main(){priority_queue<int> pq;}", "cpp", "a heap / priority queue"),
        ("int main(){queue<int> q; q.push(1); int u=q.front();}", "cpp", "breadth-first search (a queue)"),
        ("int main(){map<int,int> m; set<int> s;}", "cpp", "an ordered map"),
        ("int main(){unordered_map<int,int> m;}", "cpp", "a hash map"),
        ("int main(){auto it = lower_bound(a, a+n, 5);}", "cpp", "binary search"),
        (
            "import java.util.*; public class Main { public static void main(String[] a) { Arrays.sort(x); } }",
            "java",
            "sorting",
        ),
    ],
)
def test_each_rule_fires(code, language, feature):
    assert feature in code_features(code, language)[0]


def test_python2_code_falls_back_to_indentation_for_loops():
    code = 'n = input()\nfor i in range(n):\n    for j in range(n):\n        print i, j\nprint "done"'
    assert code_features(code, "python2") == ([], 2)


def test_describe_code_wording():
    assert describe_code("print(1)", "python") == (
        "The reference solution uses no special algorithm or data structure: a direct computation. It has no loops."
    )
    text = describe_code("a = sorted(b)\nfor x in a:\n    print(x)", "python")
    assert text == (
        "The reference solution uses sorting. Its loops nest 1 deep, so it takes about O(n) steps, "
        "plus log n factors from sorting."
    )


def test_hint_never_contains_the_program():
    views = code_views(Solution("1/A", PY_DP_BFS, "python", True))
    assert [v["name"] for v in views] == ["reference", "hint"]
    reference, hint = views[0]["text"], views[1]["text"]
    assert reference.startswith("```python\n") and PY_DP_BFS.strip() in reference
    assert not any(line.strip() and line.strip() in hint for line in PY_DP_BFS.splitlines() if len(line.strip()) > 12)
    assert code_views(None) == []


def test_guess_language():
    assert guess_language("#include <cstdio>\nint main(){}") == "cpp"
    assert guess_language("public class A { public static void main(String[] a){} }") == "java"
    assert guess_language("print(1)") == "python"


def test_last_code_block_skips_the_thinking_part():
    generation = "<think>\n```python\nprint(0)\n```\n</think>\nAnswer:\n```cpp\nint main(){}\n```\ntext\n```python\nprint(2)\n```"
    assert last_code_block(generation) == ("python", "print(2)")
    assert last_code_block("<think>```python\nprint(0)\n```</think> no code") is None
    assert last_code_block("```\nx = 1\n```") == ("", "x = 1")


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("1873/A", "1873/A"),
        ("1873A", "1873/A"),
        ("1873_a", "1873/A"),
        (" 1873 / B1 ", "1873/B1"),
        ("abc400_a", "abc400_a"),
    ],
)
def test_problem_ids_normalize(raw, normalized):
    assert normalize_problem_id(raw) == normalized


@pytest.mark.parametrize(
    "raw, language",
    [
        ("Python 3", "python"),
        ("PyPy 3-64", "python"),
        ("GNU C++17", "cpp"),
        ("cpp", "cpp"),
        ("Java 21", "java"),
        ("Kotlin", "kotlin"),
    ],
)
def test_languages_normalize(raw, language):
    assert normalize_language(raw) == language


def test_reference_choice_prefers_accepted_then_language_then_file_order():
    unverified_py = Solution("1/A", "print(1)", "python", None, order=0)
    accepted_cpp = Solution("1/A", "int main(){}", "cpp", True, order=1)
    accepted_py = Solution("1/A", "print(2)", "python", True, order=2)
    accepted_py_later = Solution("1/A", "print(3)", "python", True, order=3)
    best = None
    for candidate in (unverified_py, accepted_cpp, accepted_py, accepted_py_later):
        if better_solution(candidate, best, "python"):
            best = candidate
    assert best is accepted_py
    assert not better_solution(Solution("1/A", "  ", "python", True, order=9), None, "python")


def test_solutions_format_is_detected_from_the_fields():
    assert detect_solutions_format({"id", "generation", "finish_reason"}) == "cots"
    assert detect_solutions_format({"source", "verdict", "problem_id"}) == "submissions"
    assert detect_solutions_format({"name", "cf_contest_id", "solutions"}) == "code_contests"
    assert detect_solutions_format({"problem_id", "code"}) == "generic"


def test_livecodebench_tests_decode_plain_and_compressed():
    cases = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    compressed = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()
    assert decode_livecodebench_tests(json.dumps(cases)) == cases
    assert decode_livecodebench_tests(compressed) == cases


def test_livecodebench_decoder_refuses_pickled_objects():
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    payload = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        decode_livecodebench_tests(payload)


def test_read_tests_accepts_the_three_shapes_and_names_bad_fields():
    record = Record("f.jsonl", 3, {})
    pairs = [("1\n", "2\n"), ("3\n", "4\n")]
    as_list = [{"input": i, "output": o} for i, o in pairs]
    as_dict = {"inputs": [p[0] for p in pairs], "outputs": [p[1] for p in pairs]}
    assert read_tests(record, "t", as_list) == pairs
    assert read_tests(record, "t", as_dict) == pairs
    assert read_tests(record, "t", json.dumps(as_dict)) == pairs
    with pytest.raises(BadInputError, match=r"f.jsonl: row 3: field 't\[1\]': expected a test with 'input' and 'output'"):
        read_tests(record, "t", [{"input": "1", "output": "2"}, {"input": "3"}])
    with pytest.raises(BadInputError, match=r"field 't.outputs\[0\]': expected text, got int"):
        read_tests(record, "t", {"inputs": ["1"], "outputs": [2]})
    with pytest.raises(BadInputError, match="equal length"):
        read_tests(record, "t", {"inputs": ["1"], "outputs": []})
