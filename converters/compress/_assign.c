/* Nearest-centroid codes for converters/compress/assign.py (its numpy path gives the same codes
 * and stays the fallback when this is not built).
 *
 * codes(boundaries, values, itemsize, out, out_itemsize, zero_symbol): for each float32 or
 * float64 value, the number of boundaries <= the value (np.searchsorted(boundaries, value,
 * side="right"), the value widened to float64; NaN after every boundary, as numpy sorts it).
 * A table over up to TABLE_BINS equal bins (16 per boundary, at least 1024, at most half as
 * many as the values) between the first and the last boundary gives the codes a
 * value's bin can hold (fine enough that most bins hold at most one boundary, so the code is
 * the bin's first code or the next); the code found is checked against its two boundaries
 * (so float rounding in the bin can never make a code wrong), else a binary search finds it.
 * With zero_symbol, exact zeros get code 0 and the others code + 1.
 *
 * lookup(table, itemsize, index, index_itemsize, out): out[i] = table[index[i]] for 8- or
 * 16-bit entries and indices (codes through a table of every 16-bit value, codes remapped).
 * The GIL is released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define TABLE_BINS (1 << 16)
#define MIN_TABLE_VALUES 8192 /* fewer values: the binary search alone */

/* The number of b[lo..hi) <= v, plus lo (b sorted ascending). */
static inline int64_t upper_bound(const double *b, int64_t lo, int64_t hi, double v) {
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (b[mid] <= v) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

typedef struct {
    const double *b;
    int64_t k;
    double first, scale;
    int use_table;
    int64_t bins;
    int32_t table[TABLE_BINS + 2]; /* table[i]: boundaries <= the start of bin i */
} Search;

static void build(Search *s, const double *b, int64_t k, int use_table, int64_t n) {
    int64_t bins = 1024;
    while (bins < TABLE_BINS && bins < 16 * k && bins < n / 2) bins *= 2;
    s->bins = bins;
    s->b = b;
    s->k = k;
    s->use_table = use_table && k >= 2 && b[k - 1] > b[0] && isfinite(b[0]) && isfinite(b[k - 1]);
    if (!s->use_table) return;
    s->first = b[0];
    s->scale = bins / (b[k - 1] - b[0]);
    if (!isfinite(s->scale)) {
        s->use_table = 0;
        return;
    }
    int64_t j = 0;
    for (int64_t i = 0; i <= bins; i++) { /* a merge of the bin starts with the boundaries */
        double start = s->first + i / s->scale;
        while (j < k && b[j] <= start) j++;
        s->table[i] = (int32_t)j;
    }
    s->table[bins + 1] = (int32_t)k;
}

static inline int64_t code_of(const Search *s, double v) {
    const double *b = s->b;
    const int64_t k = s->k;
    if (v != v) return k;
    if (!s->use_table) return upper_bound(b, 0, k, v);
    double t = (v - s->first) * s->scale;
    int64_t bin = t >= 0 ? (t < s->bins ? (int64_t)t : s->bins) : 0;
    int64_t lo = s->table[bin], hi = s->table[bin + 1];
    int64_t c = hi - lo <= 1 ? lo + (lo < k && b[lo] <= v) : upper_bound(b, lo, hi, v);
    if ((c > 0 && !(b[c - 1] <= v)) || (c < k && !(b[c] > v))) return upper_bound(b, 0, k, v);
    return c;
}

#define LOOP(IN, OUT)                                                                    \
    do {                                                                                 \
        const IN *x = values.buf;                                                        \
        OUT *o = out.buf;                                                                \
        for (Py_ssize_t i = 0; i < n; i++) {                                             \
            double v = (double)x[i];                                                     \
            o[i] = (OUT)(zero_symbol ? (v == 0 ? 0 : code_of(s, v) + 1) : code_of(s, v)); \
        }                                                                                \
    } while (0)

PyDoc_STRVAR(codes_doc,
"codes(boundaries, values, itemsize, out, out_itemsize, zero_symbol)\n"
"--\n\n"
"Write np.searchsorted(boundaries, values, side='right') into `out` (uint8, uint16 or int64\n"
"by out_itemsize 1, 2, 8) for float32 or float64 `values` (itemsize 4, 8) and sorted\n"
"float64 `boundaries`; with zero_symbol, exact zeros get 0 and the other codes are + 1.\n"
"ValueError when the codes cannot fit `out`.");

static PyObject *py_codes(PyObject *self, PyObject *args) {
    Py_buffer bounds = {0}, values = {0}, out = {0};
    int itemsize, out_itemsize, zero_symbol;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*y*iw*ip", &bounds, &values, &itemsize, &out, &out_itemsize, &zero_symbol))
        return NULL;
    Py_ssize_t k = bounds.len / 8, n = itemsize == 4 || itemsize == 8 ? values.len / itemsize : 0;
    const char *err = NULL;
    if (bounds.len % 8) err = "boundaries must be float64";
    else if ((itemsize != 4 && itemsize != 8) || values.len % itemsize) err = "values must be float32 or float64";
    else if (out_itemsize != 1 && out_itemsize != 2 && out_itemsize != 8) err = "out must be uint8, uint16 or int64";
    else if (out.len != n * out_itemsize) err = "out must hold one code per value";
    else if (k >= INT32_MAX || (out_itemsize == 1 && k + zero_symbol > 255) ||
             (out_itemsize == 2 && k + zero_symbol > 65535))
        err = "codes do not fit out";
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        goto done;
    }
    Search *s = malloc(sizeof(Search));
    if (!s) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    build(s, bounds.buf, k, n >= MIN_TABLE_VALUES, n);
    if (itemsize == 4) {
        if (out_itemsize == 1) LOOP(float, uint8_t);
        else if (out_itemsize == 2) LOOP(float, uint16_t);
        else LOOP(float, int64_t);
    } else {
        if (out_itemsize == 1) LOOP(double, uint8_t);
        else if (out_itemsize == 2) LOOP(double, uint16_t);
        else LOOP(double, int64_t);
    }
    Py_END_ALLOW_THREADS
    free(s);
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&bounds);
    PyBuffer_Release(&values);
    PyBuffer_Release(&out);
    return result;
}

#define LOOKUP(T, I)                                           \
    do {                                                       \
        const T *t = table.buf;                                \
        const I *x = index.buf;                                \
        T *o = out.buf;                                        \
        for (Py_ssize_t i = 0; i < n; i++) o[i] = t[x[i]];     \
    } while (0)

PyDoc_STRVAR(lookup_doc,
"lookup(table, itemsize, index, index_itemsize, out)\n"
"--\n\n"
"out[i] = table[index[i]]: uint8 or uint16 entries (itemsize 1, 2; `out` the same) and\n"
"uint8 or uint16 indices (index_itemsize 1, 2), the table holding an entry for each.");

static PyObject *py_lookup(PyObject *self, PyObject *args) {
    Py_buffer table = {0}, index = {0}, out = {0};
    int itemsize, index_itemsize;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*iy*iw*", &table, &itemsize, &index, &index_itemsize, &out)) return NULL;
    Py_ssize_t n = index_itemsize == 1 || index_itemsize == 2 ? index.len / index_itemsize : 0;
    const char *err = NULL;
    if ((itemsize != 1 && itemsize != 2) || (index_itemsize != 1 && index_itemsize != 2))
        err = "entries and indices must be uint8 or uint16";
    else if (table.len != ((Py_ssize_t)1 << (8 * index_itemsize)) * itemsize)
        err = "the table must hold an entry for every index";
    else if (index.len % index_itemsize || out.len != n * itemsize) err = "out must hold one entry per index";
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    if (itemsize == 1 && index_itemsize == 1) LOOKUP(uint8_t, uint8_t);
    else if (itemsize == 1) LOOKUP(uint8_t, uint16_t);
    else if (index_itemsize == 1) LOOKUP(uint16_t, uint8_t);
    else LOOKUP(uint16_t, uint16_t);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&table);
    PyBuffer_Release(&index);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"codes", py_codes, METH_VARARGS, codes_doc},
    {"lookup", py_lookup, METH_VARARGS, lookup_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "converters.compress._assign", "Native nearest-centroid codes.", -1, methods,
};

PyMODINIT_FUNC PyInit__assign(void) { return PyModule_Create(&module); }
