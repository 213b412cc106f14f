"""A verl custom reward for end-to-end tests that need both correct and wrong rollouts from an
untrained model: 1.0 for about half of the responses, decided by a hash of the text (the same
text always scores the same)."""

import zlib


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    return 1.0 if zlib.crc32(solution_str.encode("utf-8")) % 2 == 0 else 0.0
