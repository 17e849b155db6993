/* Kernels of converters/compress/kmeans.py and tensor.py, each computing exactly what its numpy
 * code computes (the same float64 operations in the same order, so the same bits), which stays
 * the fallback when this is not built.
 *
 * lloyd(xs, shift, centroids, max_iter, distortions): the Lloyd iterations of kmeans_1d on
 *   sorted float64 values without importance (prefix sums of the centred values, clusters split
 *   by a binary search of each boundary).
   Each iteration's distortion is summed as np.sum sums a contiguous float64 array (numpy's
 *   pairwise summation: blocks of 128 added in 8 lanes, halves split at multiples of 8).
 * sq_sums(...): the squared errors and squared values of a block of decoded codes, summed as
 *   np.sum sums a float64 array (tensor.py's _relative_rms), without its work arrays.
 * The GIL is released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PW_BLOCKSIZE 128

/* numpy's pairwise sum (numpy/_core/src/umath/loops_utils.h.src) of term(i), i in [lo, lo + n). */
#define PAIRWISE(NAME, TERM, ...)                                                                 \
    static double NAME(int64_t lo, int64_t n, __VA_ARGS__) {                                      \
        if (n < 8) {                                                                              \
            double res = 0.;                                                                      \
            for (int64_t i = lo; i < lo + n; i++) res += TERM(i);                                 \
            return res;                                                                           \
        } else if (n <= PW_BLOCKSIZE) {                                                           \
            double r[8];                                                                          \
            for (int j = 0; j < 8; j++) r[j] = TERM(lo + j);                                      \
            int64_t i;                                                                            \
            for (i = 8; i < n - (n % 8); i += 8)                                                  \
                for (int j = 0; j < 8; j++) r[j] += TERM(lo + i + j);                             \
            double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));       \
            for (; i < n; i++) res += TERM(lo + i);                                               \
            return res;                                                                           \
        } else {                                                                                  \
            int64_t n2 = n / 2;                                                                   \
            n2 -= n2 % 8;                                                                         \
            return NAME(lo, n2, ARGS_##NAME) + NAME(lo + n2, n - n2, ARGS_##NAME);                \
        }                                                                                         \
    }

#define TERM_PLAIN(i) (a[i])
#define ARGS_sum_plain a
PAIRWISE(sum_plain, TERM_PLAIN, const double *a)

/* sq_sums: the squared errors and squared values of one block, summed pairwise as np.sum sums
 * a float64 array, the terms computed a leaf (at most PW_BLOCKSIZE of them) at a time. */
typedef struct {
    const void *x, *cb, *codes;
    const float *scales;
    int x8, c2;      /* values float64 (else float32, the codebook alike); codes uint16 (else uint8) */
    int64_t width;   /* values per scale (per row) */
} Block;

static void terms(const Block *b, int64_t lo, int64_t n, double *err, double *val) {
    for (int64_t i = 0; i < n; i++) {
        int64_t at = lo + i;
        int64_t c = b->c2 ? ((const uint16_t *)b->codes)[at] : ((const uint8_t *)b->codes)[at];
        double v, q;
        if (b->x8) {
            v = ((const double *)b->x)[at];
            q = ((const double *)b->cb)[c];
        } else {
            v = (double)((const float *)b->x)[at];
            float d = ((const float *)b->cb)[c];
            if (b->scales) d = d * b->scales[at / b->width]; /* float32 product, as numpy's */
            q = (double)d;
        }
        double diff = v - q;
        err[i] = diff * diff;
        val[i] = v * v;
    }
}

static double leaf_sum(const double *t, int64_t n) {
    if (n < 8) {
        double res = 0.;
        for (int64_t i = 0; i < n; i++) res += t[i];
        return res;
    }
    double r[8];
    for (int j = 0; j < 8; j++) r[j] = t[j];
    int64_t i;
    for (i = 8; i < n - (n % 8); i += 8)
        for (int j = 0; j < 8; j++) r[j] += t[i + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) res += t[i];
    return res;
}

static void pair_sums(const Block *b, int64_t lo, int64_t n, double *err, double *val) {
    if (n <= PW_BLOCKSIZE) {
        double e[PW_BLOCKSIZE], v[PW_BLOCKSIZE];
        terms(b, lo, n, e, v);
        *err = leaf_sum(e, n);
        *val = leaf_sum(v, n);
        return;
    }
    int64_t n2 = n / 2;
    n2 -= n2 % 8;
    double e1, v1, e2, v2;
    pair_sums(b, lo, n2, &e1, &v1);
    pair_sums(b, lo + n2, n - n2, &e2, &v2);
    *err = e1 + e2;
    *val = v1 + v2;
}

PyDoc_STRVAR(sq_sums_doc,
"sq_sums(values, values_itemsize, codebook, codes, codes_itemsize, scales, width, first, stop)\n"
"-> (error, total)\n"
"--\n\n"
"np.sum((v - q) ** 2) and np.sum(v ** 2) over values[first:stop] widened to float64, q the\n"
"decoded values codebook[codes] (float32 values: a float32 codebook, times the float32 scale\n"
"of each row of `width` values when `scales` is not None; float64 values: a float64\n"
"codebook), summed as np.sum sums a float64 array.");

static PyObject *py_sq_sums(PyObject *self, PyObject *args) {
    Py_buffer xb = {0}, cbb = {0}, codesb = {0}, sb = {0};
    int x_itemsize, c_itemsize;
    PyObject *scales_obj;
    Py_ssize_t width, first, stop;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*iy*y*iOnnn", &xb, &x_itemsize, &cbb, &codesb, &c_itemsize, &scales_obj,
                          &width, &first, &stop))
        return NULL;
    int scaled = scales_obj != Py_None;
    if (scaled && PyObject_GetBuffer(scales_obj, &sb, PyBUF_SIMPLE) < 0) goto done;
    const char *err = NULL;
    int64_t n = (x_itemsize == 4 || x_itemsize == 8) ? xb.len / x_itemsize : 0;
    int64_t k = (x_itemsize == 4 || x_itemsize == 8) ? cbb.len / x_itemsize : 0;
    if ((x_itemsize != 4 && x_itemsize != 8) || xb.len % x_itemsize || cbb.len % x_itemsize)
        err = "values and codebook must be both float32 or both float64";
    else if ((c_itemsize != 1 && c_itemsize != 2) || codesb.len != n * c_itemsize)
        err = "codes must be uint8 or uint16, one per value";
    else if (k < (c_itemsize == 1 ? 256 : 65536))
        err = "the codebook must hold an entry for every code";
    else if (first < 0 || stop < first || stop > n) err = "first:stop must lie in the values";
    else if (scaled && (x_itemsize != 4 || width < 1 || sb.len % 4 || sb.len / 4 < (n + width - 1) / width))
        err = "scales must be float32, one per row of width values, with float32 values";
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        goto done;
    }
    Block b = {xb.buf, cbb.buf, codesb.buf, scaled ? sb.buf : NULL, x_itemsize == 8, c_itemsize == 2, width};
    double error = 0., total = 0.;
    Py_BEGIN_ALLOW_THREADS
    if (stop > first) pair_sums(&b, first, stop - first, &error, &total);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("dd", 0. + error, 0. + total);
done:
    PyBuffer_Release(&xb);
    PyBuffer_Release(&cbb);
    PyBuffer_Release(&codesb);
    if (scaled) PyBuffer_Release(&sb);
    return result;
}

static inline int64_t lower_bound(const double *x, int64_t lo, int64_t hi, double v) {
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (x[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

PyDoc_STRVAR(lloyd_doc,
"lloyd(xs, shift, centroids, max_iter, distortions) -> (iterations, converged)\n"
"--\n\n"
"Lloyd iterations on sorted float64 `xs` from float64 `centroids` (updated in place), as\n"
"kmeans_1d's numpy loop runs them without importance; distortions[i] is the SSE after\n"
"iteration i (float64, at least max_iter of them).");

static PyObject *py_lloyd(PyObject *self, PyObject *args) {
    Py_buffer xb = {0}, cb = {0}, db = {0};
    double shift;
    Py_ssize_t max_iter;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*dw*nw*", &xb, &shift, &cb, &max_iter, &db)) return NULL;
    int64_t n = xb.len / 8, k = cb.len / 8;
    const char *err = NULL;
    if (xb.len % 8 || cb.len % 8 || db.len % 8) err = "xs, centroids and distortions must be float64";
    else if (n < 1 || k < 1) err = "no values or no centroids";
    else if (max_iter < 1 || db.len / 8 < max_iter) err = "distortions must hold max_iter values";
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        goto done;
    }
    const double *xs = xb.buf;
    double *c = cb.buf, *dist = db.buf;
    double *s1p = malloc((n + 1) * sizeof(double)), *s2p = malloc((n + 1) * sizeof(double));
    double *bnd = malloc(k * sizeof(double)), *terms = malloc(k * sizeof(double));
    int64_t *edges = malloc((k + 1) * sizeof(int64_t)), *prev = malloc((k + 1) * sizeof(int64_t));
    if (!s1p || !s2p || !bnd || !terms || !edges || !prev) {
        free(s1p), free(s2p), free(bnd), free(terms), free(edges), free(prev);
        PyErr_NoMemory();
        goto done;
    }
    int64_t iters = 0;
    int converged = 0;
    Py_BEGIN_ALLOW_THREADS
    /* np.cumsum of the centred values and of their squares: sequential sums */
    double p1 = 0., p2 = 0.;
    s1p[0] = s2p[0] = 0.;
    for (int64_t i = 0; i < n; i++) {
        double d = xs[i] - shift;
        p1 += d;
        p2 += d * d;
        s1p[i + 1] = p1;
        s2p[i + 1] = p2;
    }
    for (int64_t j = 0; j + 1 < k; j++) bnd[j] = (c[j] + c[j + 1]) / 2;
    for (; iters < max_iter; iters++) {
        edges[0] = 0;
        edges[k] = n;
        for (int64_t j = 0; j + 1 < k; j++) edges[j + 1] = lower_bound(xs, 0, n, bnd[j]);
        if (iters && !memcmp(edges, prev, (k + 1) * sizeof(int64_t))) {
            converged = 1;
            break;
        }
        for (int64_t j = 0; j < k; j++) {
            int64_t count = edges[j + 1] - edges[j];
            double s1 = s1p[edges[j + 1]] - s1p[edges[j]], s2 = s2p[edges[j + 1]] - s2p[edges[j]];
            double safe = count > 0 ? (double)count : 1.;
            if (count > 0) c[j] = s1 / safe + shift;
            double t = s2 - s1 * s1 / safe;
            terms[j] = t < 0. ? 0. : t;
        }
        dist[iters] = 0. + sum_plain(0, k, terms);
        for (int64_t j = 0; j + 1 < k; j++) bnd[j] = (c[j] + c[j + 1]) / 2;
        int64_t *swap = prev;
        prev = edges;
        edges = swap;
    }
    Py_END_ALLOW_THREADS
    free(s1p), free(s2p), free(bnd), free(terms), free(edges), free(prev);
    result = Py_BuildValue("ni", (Py_ssize_t)iters, converged);
done:
    PyBuffer_Release(&xb);
    PyBuffer_Release(&cb);
    PyBuffer_Release(&db);
    return result;
}

static PyMethodDef methods[] = {
    {"lloyd", py_lloyd, METH_VARARGS, lloyd_doc},
    {"sq_sums", py_sq_sums, METH_VARARGS, sq_sums_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "converters.compress._kmeans", "Native k-means iterations and error sums.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__kmeans(void) { return PyModule_Create(&module); }
