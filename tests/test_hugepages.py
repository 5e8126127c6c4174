"""``llava_accel.hugepages``: large CPU tensors in 2 MiB pages, and where the CPU backends and the KV cache use it."""

import pytest
import torch

import llava_accel as la
from llava_accel import hugepages
from llava_accel.errors import OptionError
from llava_accel.lean.cache import SlotCache

needs_thp = pytest.mark.skipif(hugepages.unavailable_reason() is not None,
                               reason=f"no huge pages here: {hugepages.unavailable_reason()}")


def huge_kib(t: torch.Tensor) -> int:
    """AnonHugePages (KiB) of the mappings that overlap ``t``'s memory (/proc/self/smaps; madvise splits a mapping
    where the advice starts and ends)."""
    begin, end, total, inside = t.data_ptr(), t.data_ptr() + t.nbytes, 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, stop = (int(x, 16) for x in head.split("-"))
                inside = start < end and begin < stop
            elif inside and head == "AnonHugePages:":
                total += int(line.split()[1])
    return total


@needs_thp
def test_advise_before_the_first_write_gives_huge_pages():
    fresh = hugepages.advise(torch.empty(16 << 20, dtype=torch.uint8))
    fresh.fill_(1)
    plain = torch.empty(16 << 20, dtype=torch.uint8)
    plain.fill_(1)
    assert huge_kib(fresh) >= 12 << 10  # the 2 MiB-aligned interior: at least 6 of its 8 pages
    if hugepages.thp_mode() == "madvise":  # where every anonymous mapping gets them, a plain one does too
        assert huge_kib(plain) == 0


@needs_thp
def test_collapse_moves_written_memory_and_keeps_its_values():
    t = torch.randn(4 << 20)  # 16 MiB, written in 4 KiB pages
    before = t.clone()
    done = hugepages.collapse([t, t[1:], torch.ones(3)])  # a view of the same storage counts once; small: skipped
    assert 0 < done.of_bytes <= t.nbytes and done.bytes == done.of_bytes
    assert huge_kib(t) >= done.bytes >> 10
    assert torch.equal(t, before)
    assert "GB in 2 MiB pages" in str(done)
    assert str(hugepages.collapse([torch.ones(3)])) == "no tensor spans a 2 MiB page"


def test_without_huge_pages_nothing_is_touched_and_the_reason_is_said(monkeypatch):
    monkeypatch.setattr(hugepages, "thp_mode", lambda: "never")
    assert "'never'" in hugepages.unavailable_reason()
    monkeypatch.setattr(hugepages, "_madvise", lambda *a: pytest.fail("madvise called"))
    hugepages.advise(torch.empty(8 << 20, dtype=torch.uint8))
    monkeypatch.setattr(hugepages, "thp_mode", lambda: None)
    assert "Linux only" in hugepages.unavailable_reason()
    backend = la.load_backend("cpu")
    assert backend.describe()["huge_pages"] == f"off: {hugepages.unavailable_reason()}"


@needs_thp
def test_kv_cache_is_made_in_huge_pages():
    cache = SlotCache(layers=2, batch=1, kv_heads=4, head_dim=64, capacity=4096, dtype=torch.float32,
                      device=torch.device("cpu"))  # 16 MiB
    cache.kv.fill_(0)
    assert huge_kib(cache.kv) >= 12 << 10


def test_cpu_backend_option(monkeypatch):
    with pytest.raises(OptionError, match="huge_pages"):
        la.load_backend("cpu", huge_pages="yes")
    asked = []
    monkeypatch.setattr(hugepages, "collapse", lambda tensors: asked.append(list(tensors)) or
                        hugepages.Collapsed(0, 0, 0.0))
    assert la.load_backend("cpu", huge_pages=False).describe()["huge_pages"] == "off (asked)"
    assert not asked
    if hugepages.unavailable_reason() is None:
        backend = la.load_backend("cpu")
        assert backend.describe()["huge_pages"] == "no tensor spans a 2 MiB page"
        assert {t.data_ptr() for t in asked[0]} >= {p.data_ptr() for p in backend.model.parameters()}


@needs_thp
def test_collapse_reaches_the_tensors_inside_a_quantised_weight():
    quanto = pytest.importorskip("optimum.quanto")
    model = torch.nn.Sequential(torch.nn.Linear(2048, 4096, bias=False))
    quanto.quantize(model, weights=quanto.qint8)
    quanto.freeze(model)
    weight = model[0].weight
    with pytest.raises(RuntimeError):  # a wrapper without storage of its own
        weight.untyped_storage().data_ptr()
    done = hugepages.collapse(model.parameters())  # its int8 data: 8 MiB
    assert done.of_bytes >= 6 << 20 and done.bytes == done.of_bytes
