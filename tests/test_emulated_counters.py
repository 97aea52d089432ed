"""The CUDA emulator's memory-access counters (dabdetr.ops.emulated_counters, docs/results/gpu_model.md):
exact on test kernels whose counts are worked out by hand below, from the model (32-byte sectors;
32 banks of 4 bytes served in phases of 32, 16 or 8 lanes for 4-, 8- and 16-byte accesses), and
scoped, deterministic and attributed to source lines on the real kernels."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import require_emulator

from dabdetr.ops import emulated_counters, modulated_attention, multi_scale_deformable_attention

pytestmark = pytest.mark.cuda_emulated
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDED = os.path.join(ROOT, "tests", "emulated_counters_recorded.json")


@pytest.fixture(autouse=True)
def _counting_build():
    require_emulator("cuda_emulated_counted", "the CUDA emulator's counting build",
                     "COUNTERS=1 bash scripts/build_cuda_emulator.sh")


def coalesced_store(lanes=32):
    """Lane i stores float i of a 64-byte-aligned buffer: 4 bytes a lane, 32 lanes in 4 sectors."""
    sectors = lanes * 4 // 32
    return {"global_store_requests": 1, "global_store_sectors": sectors, "global_store_ideal_sectors": sectors,
            "global_store_bytes": lanes * 4}


def shared(access, requests, wavefronts, ideal, bytes_):
    return {f"shared_{access}_requests": requests, f"shared_{access}_wavefronts": wavefronts,
            f"shared_{access}_ideal_wavefronts": ideal, f"shared_{access}_bytes": bytes_}


# Each test kernel of csrc/cuda_emulator/counter_checks.cu: the counts its launch must have (all
# others zero), and (DISTINCT_SECTORS) the sectors of its buffers `in` and `out` (separate and
# 64-byte aligned) it touches at all.
EXPECTED = {
    # 32 lanes x 4 contiguous bytes = 128 bytes: 4 sectors.
    "coalesced_float": {"global_load_requests": 1, "global_load_sectors": 4, "global_load_ideal_sectors": 4,
                        "global_load_bytes": 128,
                        **coalesced_store()},
    # 32 lanes x 16 bytes = 512 contiguous bytes: 16 sectors in one request.
    "vector_load": {"global_load_requests": 1, "global_load_sectors": 16, "global_load_ideal_sectors": 16,
                    "global_load_bytes": 512,
                    **coalesced_store()},
    # Lane i reads bytes 8i..8i+3: 256 bytes spanned, 8 sectors for 128 bytes asked (which need 4).
    "stride_2_float": {"global_load_requests": 1, "global_load_sectors": 8, "global_load_ideal_sectors": 4,
                       "global_load_bytes": 128,
                       **coalesced_store()},
    # Lane i reads bytes 128i..: every lane its own sector.
    "stride_32_float": {"global_load_requests": 1, "global_load_sectors": 32, "global_load_ideal_sectors": 4,
                        "global_load_bytes": 128,
                        **coalesced_store()},
    # Words 2i: banks 0, 2, .., 30 hold two words each: 2 wavefronts where 32 words need 1.
    "shared_stride_2": {**shared("store", 1, 2, 1, 128), **shared("load", 1, 2, 1, 128), "barriers": 1,
                        **coalesced_store()},
    # Words 32i: all 32 in bank 0.
    "shared_stride_32": {**shared("store", 1, 32, 1, 128), **shared("load", 1, 32, 1, 128), "barriers": 1,
                         **coalesced_store()},
    # Every lane reads word 0: one word, one wavefront.
    "shared_broadcast": {**shared("store", 1, 1, 1, 128), **shared("load", 1, 1, 1, 128), "barriers": 1,
                         **coalesced_store()},
    # 8 bytes a lane, two half-warp phases. Store float2 i: each phase 128 contiguous bytes, 1
    # wavefront. Load float2 2i: a phase reads words 4i and 4i + 1 (i < 16): banks 0, 1, 4, 5, ..,
    # 28, 29 hold two words each: 2 wavefronts a phase where its 32 words need 1.
    "shared_8_byte": {**shared("store", 1, 2, 2, 256), **shared("load", 1, 4, 2, 256), "barriers": 1,
                      **coalesced_store()},
    # sums[0] from every lane: 1 address, 1 sector; sums[1 + i]: 32 addresses, bytes 4..131 of the
    # buffer, sectors 0..4 (also the fewest: 128 bytes from byte 4 of a sector).
    "atomics": {"global_atomic_requests": 2, "global_atomic_addresses": 1 + 32, "global_atomic_sectors": 1 + 5,
                "global_atomic_ideal_sectors": 1 + 5,
                "global_atomic_bytes": 256, "atomic_requests": 2, "atomic_addresses": 33},
    # 16 active lanes: 64 bytes, 2 sectors.
    "half_warp": {"global_load_requests": 1, "global_load_sectors": 2, "global_load_ideal_sectors": 2,
                  "global_load_bytes": 64,
                  **coalesced_store(16)},
    # One load site run 3 times by each lane: 3 requests.
    "loop": {"global_load_requests": 3, "global_load_sectors": 12, "global_load_ideal_sectors": 12,
             "global_load_bytes": 384, **coalesced_store()},
    # Two warps, a static __shared__ array with rows of 33 words: words 33t fall in banks t % 32, one
    # wavefront per warp; one barrier instruction per warp.
    "static_shared": {**shared("store", 2, 2, 2, 256), **shared("load", 2, 2, 2, 256), "barriers": 2,
                      "global_store_requests": 2, "global_store_sectors": 8, "global_store_ideal_sectors": 8,
                      "global_store_bytes": 256},
}
DISTINCT_SECTORS = {  # in's sectors + out's: the coalesced 128 bytes of out are 4 (16 lanes: 2)
    "coalesced_float": 8,
    "vector_load": 20,
    "stride_2_float": 12,
    "stride_32_float": 36,
    "shared_stride_2": 4,
    "shared_stride_32": 4,
    "shared_broadcast": 4,
    "shared_8_byte": 4,
    "atomics": 5,
    "half_warp": 4,
    "loop": 16,
    "static_shared": 8,
}
COUNT_KEYS = [f"{space}_{access}_{count}"
              for space, counts in (("global", ("requests", "sectors", "ideal_sectors", "bytes")),
                                    ("shared", ("requests", "wavefronts", "ideal_wavefronts", "bytes")))
              for access in ("load", "store", "atomic")
              for count in counts + (("addresses",) if access == "atomic" else ())]
COUNT_KEYS += ["global_distinct_sectors", "atomic_requests", "atomic_addresses", "barriers", "shfl", "ldmatrix",
               "mma"]


def counts(record):
    return {key: record[key] for key in COUNT_KEYS}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts_equal_the_hand_computed_ones(name):
    with emulated_counters() as counters:
        torch.ops.dabdetr_emulated_counted.counter_check(name)
    (record,) = counters.records
    expected = {**EXPECTED[name], "global_distinct_sectors": DISTINCT_SECTORS[name]}
    assert counts(record) == {key: expected.get(key, 0) for key in COUNT_KEYS}
    # The sites add up to the launch, and each names its line in the test kernels' source.
    for site in record["sites"]:
        assert site["source"].startswith("csrc/cuda_emulator/counter_checks.cu:"), site
    for key in COUNT_KEYS:
        if not key.startswith(("global_", "shared_")) or key == "global_distinct_sectors":
            continue
        space, access = key.split("_")[:2]
        in_sites = [s.get(key, 0) for s in record["sites"] if (s["space"], s["access"]) == (space, access)]
        assert sum(in_sites) == record[key]


def test_ldmatrix_rows_counted_by_phases_of_8_lanes():
    """fragment_check's three ldmatrix.x4 read 16 x 16 tiles of 2-byte elements (32-byte rows) as
    8 x 8 matrices: a phase (one matrix) reads 16 bytes of 8 consecutive rows, words 8r..8r+3 (+ 4
    for the right half), so rows r and r + 4 share banks: 2 wavefronts a phase where 32 words need
    1, 8 per instruction against 4."""
    a = torch.zeros(16, 16, dtype=torch.int16)
    with emulated_counters() as counters:
        torch.ops.dabdetr_emulated_counted.fragment_check(a, a, a, 0)
    (record,) = counters.records
    assert record["ldmatrix"] == 3 and record["mma"] == 2
    assert {k: record[k] for k in ("shared_load_requests", "shared_load_wavefronts", "shared_load_ideal_wavefronts",
                                   "shared_load_bytes")} == shared("load", 3, 24, 12, 3 * 32 * 16)


def test_only_the_calls_inside_the_block_are_counted_and_counts_repeat():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 20, 32), torch.randn(1, 2, 24, 32)
    modulated_attention(q, q, k, k, k, impl="cuda_emulated")  # before: not counted
    with emulated_counters() as first:
        out = modulated_attention(q, q, k, k, k, impl="cuda_emulated")
    modulated_attention(q, q, k, k, k, impl="cuda_emulated")  # after: not counted
    with emulated_counters() as second:
        again = modulated_attention(q, q, k, k, k, impl="cuda_emulated")
    assert len(first.records) == 1 and first.records == second.records
    torch.testing.assert_close(out, again, rtol=0, atol=0)
    torch.testing.assert_close(out, modulated_attention(q, q, k, k, k, impl="reference"))
    with emulated_counters() as empty:
        pass
    assert empty.records == []


def test_blocks_do_not_nest():
    with emulated_counters(), pytest.raises(RuntimeError, match="do not nest"), emulated_counters():
        pass


def test_the_counting_build_needs_no_plain_build(tmp_path):
    """The GPU suite builds only the counting build: counting works in a package without the plain
    emulator, and impl="cuda_emulated" outside a block says that one is not built."""
    shutil.copytree(os.path.join(ROOT, "dabdetr"), tmp_path / "dabdetr",
                    ignore=shutil.ignore_patterns("_cuda_emulated.so", "__pycache__"))
    code = """
import pytest, torch, dabdetr
from dabdetr.ops import emulated_counters, modulated_attention
assert dabdetr.__file__.startswith({package!r}), dabdetr.__file__
info = dabdetr.kernel_info()
assert info["cuda_emulated_counted"] and not info["cuda_emulated"], info
q, k = torch.randn(1, 2, 20, 32), torch.randn(1, 2, 24, 32)
with emulated_counters() as counters:
    out = modulated_attention(q, q, k, k, k, impl="cuda_emulated")
assert len(counters.records) == 1
torch.testing.assert_close(out, modulated_attention(q, q, k, k, k, impl="reference"))
with pytest.raises(RuntimeError, match="impl='cuda_emulated' but the CUDA emulator is not built"):
    modulated_attention(q, q, k, k, k, impl="cuda_emulated")
""".format(package=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_deformable_backward_atomics_are_counted_at_their_source_line():
    """The deformable attention's backward adds value gradients with atomicAdd: counted as atomics,
    at a line of csrc/cuda/deformable_attention.cu, and every access of the launches at a source line."""
    torch.manual_seed(0)
    shapes = torch.tensor([[8, 8], [4, 4]])
    starts = torch.tensor([0, 64])
    value = torch.randn(1, 80, 2, 32, requires_grad=True)
    locations = torch.rand(1, 6, 2, 2, 4, 2, requires_grad=True)
    weights = torch.rand(1, 6, 2, 2, 4, requires_grad=True)
    with emulated_counters() as counters:
        out = multi_scale_deformable_attention(value, shapes, starts, locations, weights, impl="cuda_emulated")
        out.sum().backward()
    assert len(counters.records) >= 2
    atomics = [s for r in counters.records for s in r["sites"] if s["access"] == "atomic"]
    assert {s["space"] for s in atomics} == {"global", "shared"}  # the small levels' sums in shared memory
    assert all(s[f"{s['space']}_atomic_requests"] > 0 for s in atomics)
    assert all(s["source"].startswith("csrc/cuda/") for r in counters.records for s in r["sites"])


@pytest.fixture(scope="module")
def small_profile(tmp_path_factory):
    """scripts/profile_cuda_emulated.py --small: every kernel of the three ops at small shapes."""
    out = tmp_path_factory.mktemp("counters") / "small.json"
    result = subprocess.run([sys.executable, "scripts/profile_cuda_emulated.py", "--small", "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def launch_name(record):
    return f"{record['op']} {record['path']} {record['dtype']} {record['pass']} {record['kernel']}"


def test_every_kernel_keeps_its_recorded_counts(small_profile):
    """A change that moves any kernel's counts (more sectors, conflicts, requests...) fails here until
    the recording is redone (the script's docstring) and its difference reviewed."""
    with open(RECORDED) as f:
        recorded = json.load(f)
    assert small_profile["shapes"] == recorded["shapes"]
    now = [{k: v for k, v in r.items() if k != "sites"} for r in small_profile["records"]]
    assert [launch_name(r) for r in now] == [launch_name(r) for r in recorded["records"]]
    for record, expected in zip(now, recorded["records"]):
        changed = {k: (expected.get(k), v) for k, v in record.items() if expected.get(k) != v}
        assert not changed, f"{launch_name(record)}: (recorded, now) {changed}"


def is_default_path(record):
    """The paths a user gets without asking: SIMT float32 attention, tensor cores for 16-bit types,
    the sine embedding, the deformable attention."""
    if record["op"] == "modulated_attention":
        return (record["path"] == "simt" and record["dtype"] == "float32") or (
            record["path"].startswith("tensor_core") and record["dtype"] in ("float16", "bfloat16"))
    return True


def test_default_paths_are_coalesced_and_free_of_bank_conflicts(small_profile):
    """Every global access site of the default paths touches the fewest sectors its bytes need, and
    every shared one the fewest wavefronts; the exception (the deterministic deformable backward's
    entries, 4 consecutive a thread) has its reason beside it in the source."""
    for record in filter(is_default_path, small_profile["records"]):
        for site in record["sites"]:
            prefix = f"{site['space']}_{site['access']}_"
            where = f"{launch_name(record)} at {site['source']} ({site['access']})"
            if site["space"] == "shared":
                assert site[prefix + "wavefronts"] == site[prefix + "ideal_wavefronts"], where
            elif "entries_kernel" not in record["kernel"] or site["access"] != "store":
                assert site[prefix + "sectors"] == site[prefix + "ideal_sectors"], where


def test_ncu_counts_are_matched_to_the_emulators_launches(small_profile, tmp_path):
    """scripts/compare_ncu_counts.py on ncu output written here in ncu's CSV layout (its progress
    lines, a header, a units row, torch's own kernels between ours, names as nvcc demangles them):
    every launch matched in order, each count beside the emulator's."""
    records = small_profile["records"]
    metrics = subprocess.run([sys.executable, "scripts/compare_ncu_counts.py", "--metrics"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip().split(",")
    header = ["ID", "Process ID", "Kernel Name", *metrics]
    rows = [header, ["", "", "", *["sector"] * len(metrics)]]
    for index, record in enumerate(records):
        name = record["kernel"].replace("{anonymous}", "(anonymous namespace)")
        torch_kernel = "void at::native::vectorized_elementwise_kernel<4>(int)"
        rows.append([str(2 * index), "7", torch_kernel, *["1"] * len(metrics)])
        values = [record["global_load_requests"], record["global_load_sectors"], record["global_store_requests"],
                  record["global_store_sectors"], record["shared_load_wavefronts"], record["shared_store_wavefronts"],
                  0, 0, 4096, 2500]
        rows.append([str(2 * index + 1), "7", f"void {name}(dabdetr::cuda::Args)", *map(str, values)])
    csv_text = "==PROF== Connected to process 7\n" + "\n".join(",".join(f'"{cell}"' for cell in row) for row in rows)
    (tmp_path / "ncu.csv").write_text(csv_text + "\n==PROF== Disconnected from process 7\n")
    (tmp_path / "emulated.json").write_text(json.dumps(small_profile))
    result = subprocess.run([sys.executable, "scripts/compare_ncu_counts.py", "--ncu", str(tmp_path / "ncu.csv"),
                             "--emulated", str(tmp_path / "emulated.json"), "--markdown", str(tmp_path / "out.md")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "out.md").read_text().splitlines()
    launches = [line for line in table if line.startswith("| ") and "`" in line]
    assert len(launches) == len(records) and not any("(ncu:" in line for line in launches)
    for line, record in zip(launches, records):
        cells = line.split(" | ")
        assert cells[5] == f"{record['global_load_requests']} / {record['global_load_requests']}"
        assert cells[-2].endswith(" / 4.0") and cells[-1].endswith(" / 2.50 |")  # DRAM KB, µs
