"""Figures read from the text of an optimized (compiled) HLO module.

`bytes_accessed` sums, over the module's top-level instructions, the bytes of every operand
and result (logical shapes, as XLA's own cost analysis counts them); asynchronous copies and
slices between memory spaces (copy-start, slice-start) count the array they move once read
and once written, and instructions that move no data (parameters, tuples, bitcasts, the
*-done halves) count nothing. On TPU this reproduces `compiled.cost_analysis()["bytes
accessed"]` to within a few percent (exactly, for single MobileNet blocks); on the GPU
compile-only path, where cost_analysis() returns None, it is the only count there is.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

_ITEM_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
               "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_ITEM_BYTES, key=len, reverse=True)) +
                    r")\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.-]+) = (.+?) ([a-z][a-z0-9-]*)\((.*)$")
_CALLED = re.compile(r"(?:to_apply|calls|body|condition|branch_computations)="
                     r"\{?(%[\w.-]+(?:, %[\w.-]+)*)\}?")
# Instructions that move no data of their own.
_FREE = frozenset({"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all",
                   "partition-id", "replica-id", "copy-done", "slice-done", "opt-barrier",
                   "all-reduce-done", "all-gather-done", "collective-permute-done",
                   "send-done", "recv-done", "async-done", "add-dependency"})
_CONTROL_FLOW = frozenset({"while", "conditional", "call"})
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "collective-broadcast")


_ARRAY_WITH_LAYOUT = re.compile(_ARRAY.pattern + r"(\{[^}]*\})?")
_ON_CHIP = re.compile(r"S\([1-9]\d*\)")


def _arrays(shape_text: str) -> list[str]:
  """Each array of a shape with its layout, e.g. ["bf16[8,16]{1,0:T(8,128)S(1)}"]."""
  return [match.group(0) for match in _ARRAY_WITH_LAYOUT.finditer(shape_text)]


def array_bytes(shape_text: str) -> int:
  """Bytes of every array in a shape ("f32[8,4]{1,0}", or a tuple of them)."""
  return int(sum(math.prod(int(d) for d in dims.split(",") if d) * _ITEM_BYTES[dtype]
                 for dtype, dims in _ARRAY.findall(shape_text)))


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  opcode: str
  shape: str  # the result's shape text, layouts included
  operands: tuple[str, ...]
  line: str

  @property
  def op_name(self) -> str:
    """The jax source operation (metadata op_name), e.g. ".../stage2/unit1/conv1/conv/...."."""
    found = re.search(r'op_name="([^"]*)"', self.line)
    return found.group(1) if found else ""

  @property
  def called(self) -> tuple[str, ...]:
    found = _CALLED.search(self.line)
    return tuple(name.strip().lstrip("%") for name in found.group(1).split(",")) if found else ()


class Module:
  """The computations of an optimized HLO module, from `compiled.as_text()`."""

  def __init__(self, text: str):
    self.computations: dict[str, list[Instruction]] = {}
    self.entry = None
    current = None
    for line in text.splitlines():
      if line.startswith("ENTRY ") or line.startswith("%"):
        current = line.split()[1 if line.startswith("ENTRY ") else 0].lstrip("%")
        self.computations[current] = []
        if line.startswith("ENTRY "):
          self.entry = current
        continue
      found = _INSTRUCTION.match(line)
      if found and current is not None:
        name, shape, opcode, rest = found.groups()
        arguments = rest.split("), ", 1)[0]
        self.computations[current].append(Instruction(
            name, opcode, shape, tuple(re.findall(r"%([\w.-]+)", arguments)), line))
    if self.entry is None:
      raise ValueError("Not an HLO module: no ENTRY computation.")
    self.shapes = {i.name: i.shape for body in self.computations.values() for i in body}

  def top_level(self) -> list[Instruction]:
    """The entry computation's instructions and those of the loops and calls it runs."""
    found, pending = [], [self.entry]
    while pending:
      for instruction in self.computations[pending.pop()]:
        found.append(instruction)
        if instruction.opcode in _CONTROL_FLOW:
          pending.extend(instruction.called)
    return found

  def bytes_accessed(self, instruction: Instruction) -> int:
    """Operand and result bytes of one top-level instruction (see the module docstring)."""
    if instruction.opcode in _FREE:
      return 0
    if instruction.opcode in ("copy-start", "slice-start"):
      # Result: (destination, source, context) or ((operand), slice, context).
      arrays = _ARRAY.findall(instruction.shape)
      moved = arrays[1] if instruction.opcode == "slice-start" else arrays[0]
      return 2 * array_bytes("%s[%s]" % moved)
    return array_bytes(instruction.shape) + sum(
        array_bytes(self.shapes.get(name, "")) for name in instruction.operands)

  def total_bytes_accessed(self) -> int:
    return sum(self.bytes_accessed(i) for i in self.top_level())

  def off_chip_bytes(self) -> int:
    """The part of total_bytes_accessed() in the default (off-chip) memory space.

    TPU layouts mark arrays that the compiler placed in on-chip memory (VMEM) with S(1); what
    reads or writes them there does not touch HBM, and a copy or slice between the two spaces
    touches HBM once. An estimate of HBM traffic from the compiler's memory-space assignment.
    """
    total = 0
    for instruction in self.top_level():
      if instruction.opcode in _FREE:
        continue
      if instruction.opcode in ("copy-start", "slice-start"):
        total += self.bytes_accessed(instruction) // 2
        continue
      shapes = [instruction.shape] + [self.shapes.get(name, "") for name in instruction.operands]
      total += sum(array_bytes(array) for shape in shapes for array in _arrays(shape)
                   if not _ON_CHIP.search(array))
    return total

  def collectives(self) -> dict[str, dict[str, int]]:
    """{"all-reduce": {"count": n, "bytes": b}, ...}: b sums the results (per device)."""
    found = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
    for instruction in self.top_level():
      kind = instruction.opcode.removesuffix("-start")
      if kind in COLLECTIVES:
        found[kind]["count"] += 1
        found[kind]["bytes"] += array_bytes(instruction.shape)
    return dict(found)

  def opcode_counts(self) -> collections.Counter:
    return collections.Counter(i.opcode for i in self.top_level())

  def largest(self, count: int) -> list[tuple[int, Instruction]]:
    """The `count` top-level instructions that access the most bytes, largest first."""
    ranked = sorted(((self.bytes_accessed(i), i) for i in self.top_level()),
                    key=lambda pair: -pair[0])
    return ranked[:count]
