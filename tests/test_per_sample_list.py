"""`per_sample_list`: a per-sample non-tensor field of a verl batch as a plain list, whatever
container TransferQueue / TensorDict hands it over in."""

import numpy as np
from tensordict import NonTensorData, NonTensorStack

from verl_avsd.workers.verl_worker_seam import per_sample_list


def test_per_sample_list_of_every_container():
    infos = [{"index": 0, "views": []}, {"index": 1, "views": [{"name": "full", "text": "x"}]}]
    assert per_sample_list(infos) == infos
    assert per_sample_list(tuple(infos)) == infos
    objects = np.empty(2, dtype=object)
    objects[:] = infos
    assert per_sample_list(objects) == infos and type(per_sample_list(objects)) is list
    stack = NonTensorStack(*(NonTensorData(info) for info in infos))
    assert per_sample_list(stack) == infos
    assert per_sample_list(np.array(["a", "b"])) == ["a", "b"]
