// The patch dictionary shared by the CPU and CUDA kernels.
// Mirrors creativity_fast/dictionary.py (the one documented definition; tests
// check the two agree): which offsets a patch covers, with multiplicity weights,
// and which key centres a query position may use, per axis.
#pragma once

#if defined(__CUDACC__)
#define CF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CF_HOST_DEVICE inline
#endif

namespace creativity_fast {

enum class Mode : int { Ideal = 0, Local = 1, Els = 2 };
enum class Boundary : int { Zeros = 0, Circular = 1 };
enum class Keys : int { All = 0, Valid = 1 };

// Offsets of a patch along one axis after the reduction of dictionary.patch_offsets:
// zeros keeps -reach..reach (reach = min(m, size-1)), weight 1; circular keeps -m..m
// when P <= size, else the residues 0..size-1 with their multiplicities.
struct AxisPatch {
  int first;   // first offset
  int count;   // number of offsets
  int P;
  int size;
  Boundary boundary;

  CF_HOST_DEVICE AxisPatch(int P_, int size_, Boundary b) : P(P_), size(size_), boundary(b) {
    const int m = (P_ - 1) / 2;
    if (b == Boundary::Zeros) {
      const int reach = m < size_ - 1 ? m : size_ - 1;
      first = -reach;
      count = 2 * reach + 1;
    } else if (P_ <= size_) {
      first = -m;
      count = P_;
    } else {
      first = 0;
      count = size_;
    }
  }
  CF_HOST_DEVICE int offset(int i) const { return first + i; }
  // Multiplicity of offset i (only > 1 for circular patches larger than the image).
  CF_HOST_DEVICE int weight(int i) const {
    if (boundary == Boundary::Zeros || P <= size) return 1;
    const int m = (P - 1) / 2;
    // number of d in [-m, m] with d = i (mod size)
    const int lo = -m, hi = m;
    // smallest d >= lo with d = i mod size
    int r = ((lo - i) % size + size) % size;
    int d0 = r == 0 ? lo : lo + (size - r);
    return d0 > hi ? 0 : (hi - d0) / size + 1;
  }
  // Pixel index read at position pos + offset(i); -1 means the zero extension.
  CF_HOST_DEVICE int source(int pos, int i) const {
    int p = pos + first + i;
    if (boundary == Boundary::Circular) return ((p % size) + size) % size;
    return (p < 0 || p >= size) ? -1 : p;
  }
};

CF_HOST_DEVICE bool is_interior(int pos, int size, int P) {
  const int m = (P - 1) / 2;
  return pos >= m && pos <= size - 1 - m;
}

// May a query at position `pos` use a key centred at `key` on this axis? (docs/theory.md §3.2, §3.3)
CF_HOST_DEVICE bool admissible(int pos, int key, int size, int P, Mode mode, Boundary boundary, Keys keys) {
  if (mode == Mode::Local) return key == pos;
  if (boundary == Boundary::Circular) return keys == Keys::All || is_interior(key, size, P);
  return is_interior(pos, size, P) ? is_interior(key, size, P) : key == pos;
}

// The admissible key centres on one axis form a contiguous range [lo, hi] in every
// mode; kernels loop over it directly.
CF_HOST_DEVICE void admissible_range(int pos, int size, int P, Mode mode, Boundary boundary, Keys keys,
                                     int* lo, int* hi) {
  const int m = (P - 1) / 2;
  if (mode == Mode::Local || (boundary == Boundary::Zeros && !is_interior(pos, size, P))) {
    *lo = pos;
    *hi = pos;
  } else if (boundary == Boundary::Circular && keys == Keys::All) {
    *lo = 0;
    *hi = size - 1;
  } else {
    *lo = m;
    *hi = size - 1 - m;
  }
}

}  // namespace creativity_fast
