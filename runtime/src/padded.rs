//! Tensors laid out at their bound shape (ABI 1.6): a run's elements spread out to the
//! bound's strides, and gathered back.

/// Each run of contiguous elements of a row-major tensor of `shape` laid out at the
/// (larger or equal) `bound` shape: `f(at, at_bound, bytes)`, in increasing order of both.
fn each_run(shape: &[usize], bound: &[u64], es: usize, f: &mut dyn FnMut(usize, usize, usize)) {
    let rank = shape.len();
    if rank == 0 || shape.contains(&0) {
        if rank == 0 {
            f(0, 0, es);
        }
        return;
    }
    let run = shape[rank - 1] * es;
    let mut strides = vec![es; rank];
    for d in (0..rank - 1).rev() {
        strides[d] = strides[d + 1] * bound[d + 1] as usize;
    }
    let rows: usize = shape[..rank - 1].iter().product();
    let mut idx = vec![0usize; rank - 1];
    for r in 0..rows {
        let at_bound: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        f(r * run, at_bound, run);
        for d in (0..rank - 1).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Spreads `src` (row-major `shape`) out to the strides of `bound` in `dst`.
pub(crate) fn spread(src: &[u8], shape: &[usize], bound: &[u64], es: usize, dst: &mut [u8]) {
    each_run(shape, bound, es, &mut |at, at_bound, n| dst[at_bound..at_bound + n].copy_from_slice(&src[at..at + n]));
}

/// Gathers a tensor of `shape` laid out at the strides of `bound` to the start of `buf`,
/// row-major (each run moves down or stays: in place, in order).
pub(crate) fn gather_in_place(buf: &mut [u8], shape: &[usize], bound: &[u64], es: usize) {
    each_run(shape, bound, es, &mut |at, at_bound, n| buf.copy_within(at_bound..at_bound + n, at));
}
