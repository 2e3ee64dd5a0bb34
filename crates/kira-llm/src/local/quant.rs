//! Quantized weight rows and the dot products of a decode step: the
//! local model's hot loop.
//!
//! A step multiplies one activation row by every weight matrix, so its
//! time is the time to read the weights and multiply them. Weights stay in
//! the GGUF's own Q4_1 where the model ships it (20 bytes per 32 values,
//! widened to 24 here, its two f16 scales made f32 so no conversion is left
//! in the loop), else they are quantized to Q8 (36 bytes per 32). The
//! activation is quantized to 8 bits per block, so that a block's product
//! is 32 byte multiplications summed in integers, then scaled once.
//!
//! The AVX2 kernels go through `pulp`: its token proves at run time that
//! the CPU has AVX2 and FMA and makes the intrinsics safe to call (the
//! workspace forbids `unsafe`). Any other CPU runs the plain loops, which
//! are also the reference the kernels are tested against.

use pulp::bytemuck::cast;
#[cfg(target_arch = "x86_64")]
use pulp::x86::V3;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m128i, __m256, __m256i};

/// Values per block, in every format here.
pub(crate) const BLOCK: usize = 32;

/// 32 weights `d * q + m`, `q` in `0..16`: element `j` in the low nibble
/// of `qs[j]`, element `j + 16` in its high nibble (GGUF's Q4_1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Q4_1 {
    pub(crate) d: f32,
    pub(crate) m: f32,
    pub(crate) qs: [u8; 16],
}

/// 32 weights `d * q`, `q` in `-127..=127`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Q8 {
    pub(crate) d: f32,
    pub(crate) qs: [i8; 32],
}

/// 32 activations `d * q`, with `s = d * Σq`: what a Q4_1 block's offset
/// `m` multiplies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Activation {
    pub(crate) d: f32,
    pub(crate) s: f32,
    pub(crate) qs: [i8; 32],
}

impl Q4_1 {
    /// The blocks of GGUF Q4_1 data: per block an f16 scale, an f16
    /// offset (little-endian) and 16 bytes of nibbles.
    pub(crate) fn from_gguf(bytes: &[u8]) -> Option<Vec<Self>> {
        const SIZE: usize = 4 + 16;
        if !bytes.len().is_multiple_of(SIZE) {
            return None;
        }
        let half = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        Some(
            bytes
                .chunks_exact(SIZE)
                .map(|b| {
                    let mut qs = [0; 16];
                    qs.copy_from_slice(&b[4..]);
                    Self {
                        d: half(&b[0..2]),
                        m: half(&b[2..4]),
                        qs,
                    }
                })
                .collect(),
        )
    }

    fn unpack(&self, out: &mut [f32]) {
        let (low, high) = out.split_at_mut(16);
        for ((q, a), b) in self.qs.iter().zip(low).zip(high) {
            *a = (q & 0x0f) as f32 * self.d + self.m;
            *b = (q >> 4) as f32 * self.d + self.m;
        }
    }
}

/// `values` in blocks of 32: each block's largest magnitude is `127 * d`.
/// Returns `d`, `Σq` and the values.
fn quantize_block(values: &[f32]) -> (f32, i32, [i8; 32]) {
    let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = max / 127.0;
    let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; 32];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(values) {
        // In -127..=127 by construction; `as` saturates anyway.
        *q = (v * inverse).round() as i8;
        sum += *q as i32;
    }
    (d, sum, qs)
}

impl Q8 {
    /// `values` (a multiple of 32 of them) as Q8 blocks.
    pub(crate) fn quantize(values: &[f32]) -> Vec<Self> {
        values
            .chunks_exact(BLOCK)
            .map(|block| {
                let (d, _, qs) = quantize_block(block);
                Self { d, qs }
            })
            .collect()
    }

    fn unpack(&self, out: &mut [f32]) {
        for (o, q) in out.iter_mut().zip(self.qs) {
            *o = q as f32 * self.d;
        }
    }
}

impl Activation {
    /// `x` (a multiple of 32 values) quantized into `out`, replacing what
    /// it held.
    pub(crate) fn quantize(x: &[f32], out: &mut Vec<Self>) {
        out.clear();
        out.extend(x.chunks_exact(BLOCK).map(|block| {
            let (d, sum, qs) = quantize_block(block);
            Self {
                d,
                s: d * sum as f32,
                qs,
            }
        }));
    }
}

/// Rows taken together: each activation block is loaded once for this
/// many of them, and their blocks are stored interleaved (block `b` of
/// the group's four rows side by side, then block `b + 1`), so that a
/// product reads its weights in one sequential stream. A matrix's last
/// `rows % GROUP` rows are stored one after the other.
pub(crate) const GROUP: usize = 4;

/// A weight matrix's blocks in one of the two formats, grouped.
#[derive(Debug)]
pub(crate) struct Rows {
    blocks: Blocks,
    rows: usize,
    per_row: usize,
}

#[derive(Debug)]
enum Blocks {
    Q4_1(Vec<Q4_1>),
    Q8(Vec<Q8>),
}

/// Some rows of a [`Rows`], from a group's first row: whole groups, then
/// (only at the matrix's end) the rows left over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowsRef<'a> {
    blocks: BlocksRef<'a>,
    per_row: usize,
}

#[derive(Debug, Clone, Copy)]
enum BlocksRef<'a> {
    Q4_1(&'a [Q4_1]),
    Q8(&'a [Q8]),
}

/// Where block `b` of row `row` of a matrix of `rows` rows of `per_row`
/// blocks is stored.
fn position(rows: usize, per_row: usize, row: usize, b: usize) -> usize {
    let grouped = rows / GROUP * GROUP;
    if row < grouped {
        (row / GROUP * per_row + b) * GROUP + row % GROUP
    } else {
        row * per_row + b
    }
}

/// Row-major blocks in the grouped order.
fn grouped<W: Copy>(blocks: &[W], rows: usize, per_row: usize) -> Vec<W> {
    let mut out = blocks.to_vec();
    for row in 0..rows {
        for b in 0..per_row {
            out[position(rows, per_row, row, b)] = blocks[row * per_row + b];
        }
    }
    out
}

impl Rows {
    /// `rows` rows of `per_row` Q4_1 blocks each, row after row.
    pub(crate) fn q4_1(blocks: &[Q4_1], rows: usize, per_row: usize) -> Self {
        debug_assert_eq!(blocks.len(), rows * per_row);
        Self {
            blocks: Blocks::Q4_1(grouped(blocks, rows, per_row)),
            rows,
            per_row,
        }
    }

    /// `rows` rows of `per_row * 32` values, quantized to Q8.
    pub(crate) fn q8(values: &[f32], rows: usize, per_row: usize) -> Self {
        debug_assert_eq!(values.len(), rows * per_row * BLOCK);
        Self {
            blocks: Blocks::Q8(grouped(&Q8::quantize(values), rows, per_row)),
            rows,
            per_row,
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        match &self.blocks {
            Blocks::Q4_1(b) => std::mem::size_of_val(b.as_slice()),
            Blocks::Q8(b) => std::mem::size_of_val(b.as_slice()),
        }
    }

    /// `n` rows from `first`, which starts a group; `n` is whole groups
    /// unless the rows run to the matrix's end.
    pub(crate) fn slice(&self, first: usize, n: usize) -> RowsRef<'_> {
        assert!(first.is_multiple_of(GROUP) && first + n <= self.rows);
        assert!(n.is_multiple_of(GROUP) || first + n == self.rows);
        let range = first * self.per_row..(first + n) * self.per_row;
        let blocks = match &self.blocks {
            Blocks::Q4_1(b) => BlocksRef::Q4_1(&b[range]),
            Blocks::Q8(b) => BlocksRef::Q8(&b[range]),
        };
        RowsRef {
            blocks,
            per_row: self.per_row,
        }
    }

    #[cfg(test)]
    fn all(&self) -> RowsRef<'_> {
        self.slice(0, self.rows)
    }

    /// Row `row` as floats, into `out` (a row's length).
    pub(crate) fn row_to_float(&self, row: usize, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.per_row * BLOCK);
        for (b, o) in out.chunks_exact_mut(BLOCK).enumerate() {
            let at = position(self.rows, self.per_row, row, b);
            match &self.blocks {
                Blocks::Q4_1(blocks) => blocks[at].unpack(o),
                Blocks::Q8(blocks) => blocks[at].unpack(o),
            }
        }
    }
}

impl RowsRef<'_> {
    /// `out[r]` = row `r` · `x`, for each of the `out.len()` rows, of
    /// `x.len()` blocks each.
    pub(crate) fn dots(self, x: &[Activation], out: &mut [f32]) {
        debug_assert_eq!(x.len(), self.per_row);
        match self.blocks {
            BlocksRef::Q4_1(rows) => fastest_dots(
                rows,
                x,
                out,
                plain_q4_1,
                #[cfg(target_arch = "x86_64")]
                avx2::q4_1,
            ),
            BlocksRef::Q8(rows) => fastest_dots(
                rows,
                x,
                out,
                plain_q8,
                #[cfg(target_arch = "x86_64")]
                avx2::q8,
            ),
        }
    }

    /// The same products by the plain loops, on any CPU.
    #[cfg(test)]
    fn plain(self, x: &[Activation], out: &mut [f32]) {
        match self.blocks {
            BlocksRef::Q4_1(rows) => plain_dots(rows, x, out, plain_q4_1),
            BlocksRef::Q8(rows) => plain_dots(rows, x, out, plain_q8),
        }
    }
}

/// [`plain_dots`], or the AVX2 kernel with `block` where the CPU has it.
fn fastest_dots<W>(
    rows: &[W],
    x: &[Activation],
    out: &mut [f32],
    dot: fn(&W, &Activation) -> f32,
    #[cfg(target_arch = "x86_64")] block: impl Fn(V3, &W, &Activation, __m256i) -> (__m256, f32, f32)
    + Copy,
) {
    debug_assert_eq!(rows.len(), x.len() * out.len());
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = V3::try_new() {
        return simd.vectorize(|| avx2::dots(simd, rows, x, out, block));
    }
    plain_dots(rows, x, out, dot)
}

fn plain_dots<W>(rows: &[W], x: &[Activation], out: &mut [f32], dot: fn(&W, &Activation) -> f32) {
    let n = out.len();
    for (r, o) in out.iter_mut().enumerate() {
        *o = (0..x.len())
            .map(|b| dot(&rows[position(n, x.len(), r, b)], &x[b]))
            .sum();
    }
}

fn plain_q4_1(w: &Q4_1, a: &Activation) -> f32 {
    let (low, high) = a.qs.split_at(16);
    let sum: i32 =
        w.qs.iter()
            .zip(low.iter().zip(high))
            .map(|(q, (l, h))| (q & 0x0f) as i32 * *l as i32 + (q >> 4) as i32 * *h as i32)
            .sum();
    w.d * a.d * sum as f32 + w.m * a.s
}

fn plain_q8(w: &Q8, a: &Activation) -> f32 {
    let sum: i32 =
        w.qs.iter()
            .zip(a.qs)
            .map(|(p, q)| *p as i32 * q as i32)
            .sum();
    w.d * a.d * sum as f32
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    /// `block` gives one block's product, unscaled, in eight lanes of f32,
    /// the scale it is multiplied by, and its offset term (0 for Q8).
    #[inline(always)]
    pub(super) fn dots<W, B>(simd: V3, rows: &[W], x: &[Activation], out: &mut [f32], block: B)
    where
        B: Fn(V3, &W, &Activation, __m256i) -> (__m256, f32, f32) + Copy,
    {
        let n = x.len();
        let mut groups = out.chunks_exact_mut(GROUP);
        let mut grouped = rows.chunks_exact(n * GROUP);
        for (o, group) in (&mut groups).zip(&mut grouped) {
            o.copy_from_slice(&rows_dots::<W, B, GROUP>(simd, group, x, block));
        }
        for (o, row) in groups
            .into_remainder()
            .iter_mut()
            .zip(grouped.remainder().chunks_exact(n))
        {
            *o = rows_dots::<W, B, 1>(simd, row, x, block)[0];
        }
    }

    /// The products of `R` rows whose blocks are interleaved (`R` blocks
    /// for each activation block).
    #[inline(always)]
    fn rows_dots<W, B, const R: usize>(simd: V3, rows: &[W], x: &[Activation], block: B) -> [f32; R]
    where
        B: Fn(V3, &W, &Activation, __m256i) -> (__m256, f32, f32),
    {
        let mut acc = [simd.avx._mm256_setzero_ps(); R];
        let mut offset = [0f32; R];
        for (ws, a) in rows.chunks_exact(R).zip(x) {
            let xq: __m256i = cast(a.qs);
            for r in 0..R {
                let (p, scale, off) = block(simd, &ws[r], a, xq);
                let scale = simd.avx._mm256_set1_ps(scale);
                acc[r] = simd.fma._mm256_fmadd_ps(scale, p, acc[r]);
                offset[r] += off;
            }
        }
        std::array::from_fn(|r| {
            let lanes: [f32; 8] = cast(acc[r]);
            lanes.iter().sum::<f32>() + offset[r]
        })
    }

    /// Sixteen pairs of unsigned and signed bytes multiplied, summed in
    /// pairs twice: eight sums of four, as f32.
    #[inline(always)]
    fn products(simd: V3, unsigned: __m256i, signed: __m256i) -> __m256 {
        let ones = simd.avx._mm256_set1_epi16(1);
        let pairs = simd.avx2._mm256_maddubs_epi16(unsigned, signed);
        simd.avx
            ._mm256_cvtepi32_ps(simd.avx2._mm256_madd_epi16(pairs, ones))
    }

    #[inline(always)]
    pub(super) fn q4_1(simd: V3, w: &Q4_1, a: &Activation, xq: __m256i) -> (__m256, f32, f32) {
        let packed: __m128i = cast(w.qs);
        let high = simd.sse2._mm_srli_epi16::<4>(packed);
        let nibbles = simd.avx2._mm256_and_si256(
            simd.avx._mm256_set_m128i(high, packed),
            simd.avx._mm256_set1_epi8(0x0f),
        );
        (products(simd, nibbles, xq), w.d * a.d, w.m * a.s)
    }

    #[inline(always)]
    pub(super) fn q8(simd: V3, w: &Q8, a: &Activation, xq: __m256i) -> (__m256, f32, f32) {
        // maddubs wants one side unsigned: |w| and x with w's sign.
        let wq: __m256i = cast(w.qs);
        let magnitude = simd.avx2._mm256_sign_epi8(wq, wq);
        let signed = simd.avx2._mm256_sign_epi8(xq, wq);
        (products(simd, magnitude, signed), w.d * a.d, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    fn q4_1_blocks(n: usize, seed: &mut u64) -> Vec<Q4_1> {
        let scales = random(2 * n, seed);
        let nibbles = random(16 * n, seed);
        (0..n)
            .map(|i| Q4_1 {
                d: scales[2 * i] / 8.0,
                m: scales[2 * i + 1],
                qs: std::array::from_fn(|j| ((nibbles[16 * i + j] + 0.5) * 255.0) as u8),
            })
            .collect()
    }

    #[test]
    fn gguf_q4_1_blocks_read_as_ggml_unpacks_them() {
        // d = 0.5, m = -1.0 in f16, then nibbles 0..16 low and 15..0 high.
        let mut bytes = vec![0x00, 0x38, 0x00, 0xbc];
        bytes.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let blocks = Q4_1::from_gguf(&bytes).expect("one block");
        let mut values = [0f32; 32];
        Rows::q4_1(&blocks, 1, 1).row_to_float(0, &mut values);
        for j in 0..16 {
            assert_eq!(values[j], j as f32 * 0.5 - 1.0);
            assert_eq!(values[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
        assert!(Q4_1::from_gguf(&bytes[..19]).is_none());
    }

    #[test]
    fn quantizing_keeps_each_value_within_half_a_step() {
        let mut seed = 7;
        let values = random(96, &mut seed);
        let rows = Rows::q8(&values, 1, 3);
        let mut back = vec![0f32; 96];
        rows.row_to_float(0, &mut back);
        for (block, got) in values.chunks(32).zip(back.chunks(32)) {
            let step = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (v, g) in block.iter().zip(got) {
                assert!((v - g).abs() <= step / 2.0 + 1e-7, "{v} became {g}");
            }
        }
        let mut act = Vec::new();
        Activation::quantize(&values, &mut act);
        for (a, block) in act.iter().zip(values.chunks(32)) {
            let sum: i32 = a.qs.iter().map(|q| *q as i32).sum();
            assert_eq!(a.s, a.d * sum as f32);
            let exact: f32 = block.iter().sum();
            assert!((a.s - exact).abs() < 32.0 * a.d, "{} for {exact}", a.s);
        }
        // A block of zeros has a zero scale and no NaN.
        Activation::quantize(&[0.0; 32], &mut act);
        assert_eq!((act[0].d, act[0].s, act[0].qs), (0.0, 0.0, [0; 32]));
    }

    /// The plain loops against the float product of the same values: they
    /// differ only by the activation's rounding.
    #[test]
    fn the_plain_products_are_the_float_products_of_the_blocks() {
        let mut seed = 11;
        // Two groups of four and a row left over.
        let (rows, blocks) = (9, 3);
        let x = random(blocks * BLOCK, &mut seed);
        let mut act = Vec::new();
        Activation::quantize(&x, &mut act);
        let mut exact_x = vec![0f32; x.len()];
        for (a, o) in act.iter().zip(exact_x.chunks_exact_mut(BLOCK)) {
            for (v, q) in o.iter_mut().zip(a.qs) {
                *v = q as f32 * a.d;
            }
        }
        let q4 = Rows::q4_1(&q4_1_blocks(rows * blocks, &mut seed), rows, blocks);
        let q8 = Rows::q8(&random(rows * blocks * BLOCK, &mut seed), rows, blocks);
        for matrix in [q4, q8] {
            let mut got = vec![0f32; rows];
            matrix.all().plain(&act, &mut got);
            let mut w = vec![0f32; blocks * BLOCK];
            for (r, g) in got.iter().enumerate() {
                matrix.row_to_float(r, &mut w);
                let want: f32 = w.iter().zip(&exact_x).map(|(a, b)| a * b).sum();
                assert!((g - want).abs() < 1e-4, "row {r}: {g} for {want}");
            }
        }
    }

    /// Whatever kernel this CPU runs gives the plain loops' figures, for
    /// groups of four rows and the rows left over.
    #[test]
    fn the_kernels_give_the_plain_loops_figures() {
        let mut seed = 3;
        for (rows, blocks) in [(1, 1), (4, 18), (7, 2), (13, 48)] {
            let mut act = Vec::new();
            Activation::quantize(&random(blocks * BLOCK, &mut seed), &mut act);
            let q4 = Rows::q4_1(&q4_1_blocks(rows * blocks, &mut seed), rows, blocks);
            let q8 = Rows::q8(&random(rows * blocks * BLOCK, &mut seed), rows, blocks);
            for matrix in [q4, q8] {
                let (mut fast, mut plain) = (vec![0f32; rows], vec![0f32; rows]);
                matrix.all().dots(&act, &mut fast);
                matrix.all().plain(&act, &mut plain);
                for (f, p) in fast.iter().zip(&plain) {
                    assert!((f - p).abs() <= 1e-5 * p.abs().max(1.0), "{f} vs {p}");
                }
            }
        }
    }

    /// A matrix split into slices of whole groups (as the threads split
    /// it) gives the products of the whole, row for row.
    #[test]
    fn slices_of_whole_groups_give_the_rows_of_the_whole() {
        let mut seed = 5;
        let (rows, blocks) = (13, 2);
        let mut act = Vec::new();
        Activation::quantize(&random(blocks * BLOCK, &mut seed), &mut act);
        let q4 = Rows::q4_1(&q4_1_blocks(rows * blocks, &mut seed), rows, blocks);
        let q8 = Rows::q8(&random(rows * blocks * BLOCK, &mut seed), rows, blocks);
        for matrix in [q4, q8] {
            let mut whole = vec![0f32; rows];
            matrix.all().dots(&act, &mut whole);
            let mut parts = vec![0f32; rows];
            for (first, n) in [(0, 4), (4, 8), (12, 1)] {
                matrix
                    .slice(first, n)
                    .dots(&act, &mut parts[first..first + n]);
            }
            assert_eq!(parts, whole);
        }
    }
}
