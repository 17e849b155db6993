/* Kernels of converters/compress/kmeans.py and tensor.py, each computing exactly what its numpy
 * code computes (the same float64 operations in the same order, so the same bits), which stays
 * the fallback when this is not built.
 *
 * lloyd(xs, shift, centroids, max_iter, distortions): the Lloyd iterations of kmeans_1d on
 *   sorted float64 values without importance (prefix sums of the centred values, clusters split
 *   by a binary search of each boundary).
   Each iteration's distortion is summed as np.sum sums a contiguous float64 array (numpy's
 *   pairwise summation: blocks of 128 added in 8 lanes, halves split at multiples of 8).
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "converters.compress._kmeans", "Native k-means iterations and error sums.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__kmeans(void) { return PyModule_Create(&module); }
