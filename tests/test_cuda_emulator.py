"""The CUDA emulator itself (csrc/cuda_emulator): its matrix instructions held to the PTX ISA, and
its execution model refusing what the hardware and the runtime leave undefined or refuse.

The fragment tables below are written from the PTX ISA ("Matrix Fragments for mma.m16n8k16 with
floating point type", "Matrix Fragments for mma.m16n8k8" with .tf32, "ldmatrix"), independently of
the emulator's C++ transcription; the products are checked against torch.matmul."""

import re

import pytest
import torch
from conftest import DEVICES, check_target

pytestmark = pytest.mark.cuda_emulated


@pytest.fixture(autouse=True)
def _emulator():
    check_target(next(t for t in DEVICES if t.id == "cuda_emulated").values[0])


def group_and_thread(lane):
    return lane >> 2, lane % 4  # groupID, threadID_in_group


def a16(lane, i):
    """(row, col) of element a_i (0..7) of a 16-bit A fragment, 16 x 16."""
    group, thread = group_and_thread(lane)
    row = group if i < 2 or 4 <= i < 6 else group + 8
    col = thread * 2 + (i & 1) + (8 if i >= 4 else 0)
    return row, col


def b16(lane, i):
    """(row, col) of element b_i (0..3) of a 16-bit B fragment, 16 x 8."""
    group, thread = group_and_thread(lane)
    return thread * 2 + (i & 1) + (8 if i >= 2 else 0), group


def c32(lane, i):
    """(row, col) of element c_i (0..3) of an fp32 C or D fragment, 16 x 8."""
    group, thread = group_and_thread(lane)
    return (group if i < 2 else group + 8), thread * 2 + (i & 1)


def a_tf32(lane, i):
    group, thread = group_and_thread(lane)
    return (group if i in (0, 2) else group + 8), (thread if i < 2 else thread + 4)


def b_tf32(lane, i):
    group, thread = group_and_thread(lane)
    return (thread if i == 0 else thread + 4), group


def halves(register):
    """The two 16-bit elements of a 32-bit register: the lower-numbered one in the low half."""
    register = int(register) & 0xFFFFFFFF
    return register & 0xFFFF, register >> 16


@pytest.mark.parametrize("dtype,kind", [(torch.bfloat16, 0), (torch.float16, 1)], ids=["bf16", "fp16"])
def test_ldmatrix_and_mma_m16n8k16_follow_the_isa(dtype, kind):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, generator=g).to(dtype)
    b = torch.randn(16, 16, generator=g).to(dtype)  # k x n: two n tiles of 8
    bits = lambda t: t.contiguous().view(torch.int16)  # noqa: E731
    d, a_regs, b_regs, bt_regs = torch.ops.dabdetr_emulated.fragment_check(bits(a), bits(b.T), bits(b), kind)
    a_bits, b_bits = (t.view(torch.int16).to(torch.int64) & 0xFFFF for t in (a, b))
    expected = a.double() @ b.double()
    for lane in range(32):
        for register in range(4):  # A: elements 2r and 2r + 1
            for half, element in zip(range(2), halves(a_regs[lane, register])):
                assert element == a_bits[a16(lane, 2 * register + half)], (lane, register, half)
            tile = register // 2  # B: two n tiles, elements 2r' and 2r' + 1 of each
            for half, element in zip(range(2), halves(b_regs[lane, register])):
                row, col = b16(lane, 2 * (register % 2) + half)
                assert element == b_bits[row, col + 8 * tile], (lane, register, half)
        for i in range(4):
            row, col = c32(lane, i)
            for tile in range(2):
                assert d[lane, 4 * tile + i].item() == pytest.approx(expected[row, col + 8 * tile].item(),
                                                                       rel=1e-6, abs=1e-6)
    # ldmatrix .trans of the k-major B gives the fragments the plain ldmatrix gives of B^T.
    assert torch.equal(bt_regs, b_regs)


def tf32_bits(x, mode):
    """x rounded to tf32: "rna" as cvt.rna.tf32.f32 (nearest, ties away from zero), "truncate" as
    the tensor cores read operands that were not converted."""
    bits = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    if mode == "rna":
        bits = bits + 0x1000
    return (bits & 0xFFFFE000).to(torch.int32)  # the low 13 of 23 mantissa bits cleared


@pytest.mark.parametrize("mode,kind", [("rna", 2), ("truncate", 3)])
def test_mma_m16n8k8_tf32_follows_the_isa(mode, kind):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(16, 8, generator=g)
    b = torch.randn(8, 8, generator=g)  # k x n
    d, a_regs, b_regs, _ = torch.ops.dabdetr_emulated.fragment_check(a, b.T.contiguous(), a, kind)
    a_tf, b_tf = tf32_bits(a, mode), tf32_bits(b, mode)
    for lane in range(32):
        for i in range(4):
            assert a_regs[lane, i] == (a_tf[a_tf32(lane, i)] if kind == 2 else a.view(torch.int32)[a_tf32(lane, i)])
        for i in range(2):
            row, col = b_tf32(lane, i)
            assert b_regs[lane, i] == (b_tf[row, col] if kind == 2 else b.view(torch.int32)[row, col])
    expected = a_tf.view(torch.float32).double() @ b_tf.view(torch.float32).double()
    for lane in range(32):
        for i in range(4):
            assert d[lane, i].item() == pytest.approx(expected[c32(lane, i)].item(), rel=1e-6, abs=1e-6)
    # The rounding matters: the exact product differs from the tf32 one at this scale.
    assert not torch.allclose(expected, a.double() @ b.double(), rtol=0, atol=1e-5)


def test_tf32_rounding_is_nearest_ties_away():
    # 1 + 2^-11 is halfway between two tf32 values: cvt.rna rounds it up, truncation down.
    x = torch.tensor([1 + 2.0**-11, -(1 + 2.0**-11), 1 + 2.0**-12, 3.0] + [0.0] * 124).reshape(16, 8)
    _, a_regs, _, _ = torch.ops.dabdetr_emulated.fragment_check(x, torch.zeros(8, 8), x, 2)
    lane0 = a_regs[0, 0].view(torch.float32).item()  # a_0 of lane 0 is A[0, 0]
    lane1 = a_regs[1, 0].view(torch.float32).item()  # A[0, 1]
    lane2 = a_regs[2, 0].view(torch.float32).item()  # A[0, 2]
    assert lane0 == 1 + 2.0**-10 and lane1 == -(1 + 2.0**-10) and lane2 == 1.0


MISUSE = {
    0: re.escape("waits at __syncthreads, which 32 threads of its block have exited without reaching "
                 "(barrier divergence)"),
    1: re.escape("__shfl_xor_sync: lane 5 of the mask has exited"),
    2: "no thread can run any more .* 48 threads wait at __syncthreads, and at warp collectives: thread \\(32, 0, 0\\) "
       "at __shfl_xor_sync",
    3: "^invalid configuration argument$",  # 1025 threads a block
    4: "^invalid configuration argument$",  # grid y of 65536
    5: "^invalid argument$",  # 48 KiB + 1 of dynamic shared memory, limit not raised
    6: "^invalid argument$",  # the limit raised past the device's opt-in maximum
    8: "lanes of warp 0 meet at different collectives",  # shuffles under overlapping masks
}


@pytest.mark.parametrize("kind", sorted(MISUSE))
def test_misuse_is_refused_with_the_runtime_error(kind):
    message = torch.ops.dabdetr_emulated.misuse_check(kind)
    assert re.search(MISUSE[kind], message), message
    if kind <= 2 or kind == 8:  # inside a kernel: named as compute-sanitizer would
        assert message.startswith("unspecified launch failure: dabdetr::cuda::")
        assert "block (0, 0, 0)" in message


@pytest.mark.parametrize("gpu,optin_kib", [("sm_90", 227), ("sm_80", 163)])
def test_dynamic_shared_memory_up_to_the_emulated_gpus_opt_in_maximum(gpu, optin_kib, monkeypatch):
    monkeypatch.setenv("DABDETR_EMULATED_GPU", gpu)
    assert torch.ops.dabdetr_emulated.misuse_check(7) == ""  # exactly the maximum, once raised
    assert torch.ops.dabdetr_emulated.misuse_check(6) == "invalid argument"  # one byte more


def test_sub_warp_shuffles_and_atomics():
    """Groups of 8 lanes shuffle under their own masks, each group a different number of times (so
    a warp's groups meet their collectives at different times), and every thread of two blocks adds
    to the same floats with atomicAdd (the deformable attention's backward does both)."""
    group_sums, sums = torch.ops.dabdetr_emulated.collective_check()
    expected = torch.zeros(64)
    for t in range(64):
        group = range(t // 8 * 8, t // 8 * 8 + 8)
        expected[t] = sum(sum(u + r for u in group) for r in range(t // 8 % 3 + 1))
    assert torch.equal(group_sums, expected.expand(2, 64))
    by_residue = [2.0 * sum(t for t in range(64) if t % 4 == r) for r in range(4)]
    assert torch.equal(sums, torch.tensor([128.0, *by_residue]))
