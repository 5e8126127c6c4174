"""Energy meters on fake counters: exact joules, wrap-around, fallbacks, and the estimate labelled as one."""

import sys
import time
import types

import pytest

from llava_accel.metrics import energy as E


class FakeNvml(types.ModuleType):
    """The part of pynvml the meters use; energy in mJ and power in mW come from scripted lists."""

    class NVMLError(Exception):
        pass

    def __init__(self, energy_mj=None, power_mw=None):
        super().__init__("pynvml")
        self.energy_mj, self.power_mw = list(energy_mj or []), power_mw
        self.inits = self.shutdowns = 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return f"gpu{index}"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.energy_mj:
            raise self.NVMLError("Not Supported")
        return self.energy_mj.pop(0)

    def nvmlDeviceGetPowerUsage(self, handle):
        return self.power_mw


def test_nvml_energy_counter_exact(monkeypatch):
    nvml = FakeNvml(energy_mj=[1_000_000, 1_002_500, 1_010_000])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    meter = E.open_meter("cuda:0")
    assert (meter.source, meter.label) == ("nvml-energy-counter", "measured")
    assert meter.read() == 2.5
    assert meter.read() == 10.0
    meter.close()
    assert nvml.shutdowns == 1


def test_nvml_power_sampling_when_counter_unsupported(monkeypatch):
    nvml = FakeNvml(energy_mj=[], power_mw=50_000)  # pre-Volta: no total-energy counter
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    t0 = time.perf_counter()
    meter = E.open_meter("cuda")
    time.sleep(0.1)
    joules, elapsed = meter.read(), time.perf_counter() - t0
    meter.close()
    assert meter.source == "nvml-power-sampling" and meter.measured
    assert meter.thread is not None and not meter.thread.is_alive()
    # constant 50 W: the trapezoid integral is exact, 50 W x the span between first and last sample
    assert 50 * (elapsed - 0.05) < joules <= 50 * elapsed


def test_power_sampler_trapezoid_exact():
    clock = iter([0.0, 1.0, 3.0]).__next__
    power = iter([100.0, 100.0, 200.0]).__next__
    sampler = E.PowerSampler(power, clock=clock, background=False)
    assert sampler.read() == 100.0  # 1 s at 100 W
    assert sampler.read() == 400.0  # + 2 s ramping 100 -> 200 W: 300 J


def test_no_nvml_falls_back_to_estimate_with_reasons(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    meter = E.open_meter("cuda:0")
    assert (meter.source, meter.label, meter.measured) == ("estimated", "estimated", False)
    assert "NVML energy counter" in meter.note and "NVML power" in meter.note
    assert "GPU's energy is not included" in meter.scope


def _rapl_tree(root, domains):
    for name, label, energy, max_range in domains:
        d = root / name
        d.mkdir(parents=True)
        (d / "name").write_text(label + "\n")
        (d / "energy_uj").write_text(f"{energy}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")


def test_rapl_packages_exact_and_wraparound(tmp_path, monkeypatch):
    _rapl_tree(tmp_path, [("intel-rapl:0", "package-0", 262_143_328_850 - 100, 262_143_328_850),
                          ("intel-rapl:0:0", "core", 5, 10**9),  # inside package 0: not counted again
                          ("intel-rapl:1", "package-1", 1_000_000, 262_143_328_850),
                          ("intel-rapl:2", "psys", 7, 10**9)])  # contains the packages: not counted
    monkeypatch.setattr(E, "RAPL_ROOT", tmp_path)
    meter = E.open_meter("cpu")
    assert (meter.source, meter.label) == ("rapl", "measured")
    assert [d.name for d in meter.domains] == ["intel-rapl:0", "intel-rapl:1"]
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("50\n")  # wrapped: +100 to the top, then +50
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("3000000\n")  # +2 J
    (tmp_path / "intel-rapl:0:0" / "energy_uj").write_text("999\n")
    assert meter.read() == pytest.approx((150 + 2_000_000) / 1e6)
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("1000050\n")  # +1 J, no wrap
    assert meter.read() == pytest.approx((150 + 3_000_000) / 1e6)


def test_cpu_without_rapl_is_estimated(tmp_path, monkeypatch):
    monkeypatch.setattr(E, "RAPL_ROOT", tmp_path / "absent")
    meter = E.open_meter("cpu")
    assert (meter.source, meter.label) == ("estimated", "estimated")
    assert "RAPL: no RAPL package domain" in meter.note


def test_estimate_is_cpu_time_times_stated_watts(monkeypatch):
    times = iter([5.0, 7.5])
    monkeypatch.setattr(E.time, "process_time", lambda: next(times))
    meter = E.CpuTimeEstimate(watts_per_cpu=10.0)
    assert meter.read() == 25.0 and not meter.measured and "x 10 W per busy CPU" in meter.scope


def test_idle_power_uses_the_same_meter():
    sampler = E.PowerSampler(lambda: 30.0, interval=0.01)
    watts = E.idle_power(sampler, 0.05)
    sampler.close()
    assert watts == pytest.approx(30.0, rel=0.05)
