"""A small QR code encoder (ISO/IEC 18004): byte mode, error correction level M.

Only what a TOTP enrolment needs: an ``otpauth://`` URI of up to 213 bytes
(versions 1 to 10), drawn as an SVG the console shows through a ``data:`` URL,
so no script library and no inline markup reach the page.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

Matrix = list[list[bool]]

MAX_VERSION = 10
# Level M, per version (index 0 unused): error correction bytes per block, blocks.
_ECC_PER_BLOCK = (0, 10, 16, 26, 18, 24, 16, 18, 22, 22, 26)
_BLOCKS = (0, 1, 1, 1, 2, 2, 4, 4, 4, 5, 5)
_FORMAT_LEVEL_M = 0b00

MASKS: tuple[Callable[[int, int], bool], ...] = (
    lambda x, y: (x + y) % 2 == 0,
    lambda x, y: y % 2 == 0,
    lambda x, y: x % 3 == 0,
    lambda x, y: (x + y) % 3 == 0,
    lambda x, y: (x // 3 + y // 2) % 2 == 0,
    lambda x, y: x * y % 2 + x * y % 3 == 0,
    lambda x, y: (x * y % 2 + x * y % 3) % 2 == 0,
    lambda x, y: ((x + y) % 2 + x * y % 3) % 2 == 0,
)


def _raw_modules(version: int) -> int:
    """Modules left for data and error correction once function patterns are drawn."""
    result = (16 * version + 128) * version + 64
    if version >= 2:
        aligns = version // 7 + 2
        result -= (25 * aligns - 10) * aligns - 55
        if version >= 7:
            result -= 36
    return result


def _data_capacity(version: int) -> int:
    return _raw_modules(version) // 8 - _ECC_PER_BLOCK[version] * _BLOCKS[version]


def _alignment_positions(version: int) -> list[int]:
    if version == 1:
        return []
    aligns = version // 7 + 2
    size = version * 4 + 17
    step = (version * 8 + aligns * 3 + 5) // (aligns * 4 - 4) * 2
    return [6, *reversed([size - 7 - i * step for i in range(aligns - 1)])]


# Reed-Solomon over GF(2^8) with the polynomial x^8 + x^4 + x^3 + x^2 + 1.


def _gf_mul(x: int, y: int) -> int:
    z = 0
    for i in reversed(range(8)):
        z = (z << 1) ^ ((z >> 7) * 0x11D)
        z ^= ((y >> i) & 1) * x
    return z


def _rs_divisor(degree: int) -> list[int]:
    result = [0] * (degree - 1) + [1]
    root = 1
    for _ in range(degree):
        for j in range(degree):
            result[j] = _gf_mul(result[j], root)
            if j + 1 < degree:
                result[j] ^= result[j + 1]
        root = _gf_mul(root, 0x02)
    return result


def _rs_remainder(data: list[int], divisor: list[int]) -> list[int]:
    result = [0] * len(divisor)
    for byte in data:
        factor = byte ^ result.pop(0)
        result.append(0)
        for i, coef in enumerate(divisor):
            result[i] ^= _gf_mul(coef, factor)
    return result


# Data codewords: mode, length, bytes, terminator, padding; then blocks interleaved.


def _codewords(data: bytes, version: int) -> list[int]:
    bits: list[int] = []

    def put(value: int, count: int) -> None:
        bits.extend((value >> i) & 1 for i in reversed(range(count)))

    put(0b0100, 4)
    put(len(data), 8 if version < 10 else 16)
    for byte in data:
        put(byte, 8)
    capacity = _data_capacity(version) * 8
    put(0, min(4, capacity - len(bits)))
    put(0, -len(bits) % 8)
    pad = 0xEC
    while len(bits) < capacity:
        put(pad, 8)
        pad ^= 0xEC ^ 0x11
    return [int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8)]


def _interleave(data: list[int], version: int) -> list[int]:
    blocks, ecc_len = _BLOCKS[version], _ECC_PER_BLOCK[version]
    raw = _raw_modules(version) // 8
    short_blocks = blocks - raw % blocks
    short_len = raw // blocks
    divisor = _rs_divisor(ecc_len)
    parts: list[list[int]] = []
    k = 0
    for i in range(blocks):
        length = short_len - ecc_len + (0 if i < short_blocks else 1)
        chunk = data[k : k + length]
        k += length
        ecc = _rs_remainder(chunk, divisor)
        if i < short_blocks:
            chunk = [*chunk, -1]  # a hole, so every block lines up column by column
        parts.append(chunk + ecc)
    return [
        block[i]
        for i in range(len(parts[0]))
        for j, block in enumerate(parts)
        if i != short_len - ecc_len or j >= short_blocks
    ]


class _Grid:
    def __init__(self, version: int) -> None:
        self.version = version
        self.size = version * 4 + 17
        self.dark: Matrix = [[False] * self.size for _ in range(self.size)]
        self.fixed: Matrix = [[False] * self.size for _ in range(self.size)]

    def set(self, x: int, y: int, dark: bool) -> None:
        self.dark[y][x] = dark
        self.fixed[y][x] = True

    def function_patterns(self) -> None:
        size = self.size
        for i in range(size):
            self.set(6, i, i % 2 == 0)
            self.set(i, 6, i % 2 == 0)
        for cx, cy in ((3, 3), (size - 4, 3), (3, size - 4)):
            self._finder(cx, cy)
        positions = _alignment_positions(self.version)
        last = len(positions) - 1
        for i, ax in enumerate(positions):
            for j, ay in enumerate(positions):
                if (i, j) not in ((0, 0), (0, last), (last, 0)):
                    self._alignment(ax, ay)
        self.format_bits(0)  # reserve the areas; the real mask is drawn later
        self._version_bits()

    def _finder(self, cx: int, cy: int) -> None:
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                x, y = cx + dx, cy + dy
                if 0 <= x < self.size and 0 <= y < self.size:
                    dist = max(abs(dx), abs(dy))
                    self.set(x, y, dist not in (2, 4))

    def _alignment(self, cx: int, cy: int) -> None:
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                self.set(cx + dx, cy + dy, max(abs(dx), abs(dy)) != 1)

    def format_bits(self, mask: int) -> None:
        data = _FORMAT_LEVEL_M << 3 | mask
        rem = data
        for _ in range(10):
            rem = (rem << 1) ^ ((rem >> 9) * 0x537)
        bits = (data << 10 | rem) ^ 0x5412
        size = self.size

        def bit(i: int) -> bool:
            return (bits >> i) & 1 == 1

        for i in range(6):
            self.set(8, i, bit(i))
        self.set(8, 7, bit(6))
        self.set(8, 8, bit(7))
        self.set(7, 8, bit(8))
        for i in range(9, 15):
            self.set(14 - i, 8, bit(i))
        for i in range(8):
            self.set(size - 1 - i, 8, bit(i))
        for i in range(8, 15):
            self.set(8, size - 15 + i, bit(i))
        self.set(8, size - 8, True)

    def _version_bits(self) -> None:
        if self.version < 7:
            return
        rem = self.version
        for _ in range(12):
            rem = (rem << 1) ^ ((rem >> 11) * 0x1F25)
        bits = self.version << 12 | rem
        for i in range(18):
            dark = (bits >> i) & 1 == 1
            a, b = self.size - 11 + i % 3, i // 3
            self.set(a, b, dark)
            self.set(b, a, dark)

    def place(self, codewords: list[int]) -> None:
        """The zigzag: two-module columns from the right, up then down."""
        size, i, total = self.size, 0, len(codewords) * 8
        right = size - 1
        while right >= 1:
            if right == 6:
                right = 5
            for vert in range(size):
                for j in range(2):
                    x = right - j
                    upward = (right + 1) & 2 == 0
                    y = size - 1 - vert if upward else vert
                    if not self.fixed[y][x] and i < total:
                        self.dark[y][x] = (codewords[i >> 3] >> (7 - (i & 7))) & 1 == 1
                        i += 1
            right -= 2

    def masked(self, mask: int) -> Matrix:
        test = MASKS[mask]
        out = [
            [self.dark[y][x] ^ (not self.fixed[y][x] and test(x, y)) for x in range(self.size)]
            for y in range(self.size)
        ]
        saved = [row[:] for row in self.dark]
        self.dark = out
        self.format_bits(mask)
        result, self.dark = self.dark, saved
        return result


def _runs_penalty(line: list[bool]) -> int:
    score, run, prev = 0, 0, None
    for module in line:
        if module == prev:
            run += 1
        else:
            score += run - 2 if run >= 5 else 0
            run, prev = 1, module
    return score + (run - 2 if run >= 5 else 0)


_FINDER_LIKE = (
    [True, False, True, True, True, False, True, False, False, False, False],
    [False, False, False, False, True, False, True, True, True, False, True],
)


def _finder_penalty(line: list[bool]) -> int:
    hits = 0
    for start in range(len(line) - 10):
        window = line[start : start + 11]
        hits += sum(window == pattern for pattern in _FINDER_LIKE)
    return 40 * hits


def penalty(matrix: Matrix) -> int:
    """The standard's four rules; the mask with the lowest score is used."""
    size = len(matrix)
    columns = [[matrix[y][x] for y in range(size)] for x in range(size)]
    score = 0
    for line in (*matrix, *columns):
        score += _runs_penalty(line) + _finder_penalty(line)
    for y in range(size - 1):
        for x in range(size - 1):
            cell = matrix[y][x]
            if cell == matrix[y][x + 1] == matrix[y + 1][x] == matrix[y + 1][x + 1]:
                score += 3
    dark = sum(map(sum, matrix))
    total = size * size
    score += (abs(dark * 20 - total * 10) + total - 1) // total * 10 - 10
    return score


def encode(data: bytes, mask: int | None = None) -> Matrix:
    """The module matrix (True = dark) of the smallest version that holds ``data``."""
    version = next((v for v in range(1, MAX_VERSION + 1) if len(data) <= _byte_limit(v)), None)
    if version is None:
        raise ValueError(f"too much data for a QR code here ({len(data)} bytes)")
    grid = _Grid(version)
    grid.function_patterns()
    grid.place(_interleave(_codewords(data, version), version))
    if mask is not None:
        return grid.masked(mask)
    return min((grid.masked(m) for m in range(8)), key=penalty)


def _byte_limit(version: int) -> int:
    header_bits = 4 + (8 if version < 10 else 16)
    return (_data_capacity(version) * 8 - header_bits) // 8


def svg(matrix: Matrix, border: int = 4) -> str:
    """Black modules on white, one path; scales cleanly at any size."""
    size = len(matrix) + 2 * border
    cells = "".join(
        f"M{x + border} {y + border}h1v1h-1z"
        for y, row in enumerate(matrix)
        for x, dark in enumerate(row)
        if dark
    )
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {size} {size}" shape-rendering="crispEdges">'
        f'<rect width="{size}" height="{size}" fill="#fff"/>'
        f'<path d="{cells}" fill="#000"/></svg>'
    )


def svg_data_url(text: str) -> str:
    encoded = base64.b64encode(svg(encode(text.encode("utf-8"))).encode()).decode()
    return f"data:image/svg+xml;base64,{encoded}"
