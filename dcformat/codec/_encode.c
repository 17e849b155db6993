/* Native encode kernels for dcformat (dcformat/codec/huffman.py calls them; its numpy path
 * gives the same bytes and stays the fallback when this is not built).
 *
 * frequencies: counts of uint8 or uint16 symbols.
 * pack: Huffman codes of uint8 or uint16 symbols written into an LSB-first bitstream (spec
 * section 6): the caller passes each symbol's code with its bits already reversed, so a code
 * is ORed in at the current bit position as it is; a chunk starts every chunk_size symbols
 * and its starting bit offset is recorded. Every symbol is checked against the table and
 * every write against the output buffer, whatever the input. The GIL is released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LEN 16

PyDoc_STRVAR(frequencies_doc,
"frequencies(symbols, itemsize, out)\n"
"--\n\n"
"Add how often each symbol occurs in the uint8 (itemsize 1) or uint16 (itemsize 2) buffer\n"
"`symbols` to the int64 buffer `out`, one count per symbol of the alphabet. ValueError\n"
"for a symbol outside the alphabet (`out` is then left unchanged).");

static PyObject *py_frequencies(PyObject *self, PyObject *args) {
    Py_buffer sym = {0}, out = {0};
    int itemsize;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*iw*", &sym, &itemsize, &out)) return NULL;
    Py_ssize_t k = out.len / 8, n = itemsize ? sym.len / itemsize : 0;
    if ((itemsize != 1 && itemsize != 2) || sym.len % itemsize || out.len % 8 || k < 1) {
        PyErr_SetString(PyExc_ValueError, "symbols must be uint8 or uint16 and out int64 counts");
        goto done;
    }
    int64_t *counts = calloc((size_t)(itemsize == 1 ? 256 : 65536), sizeof(int64_t));
    if (!counts) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t top = 0;
    Py_BEGIN_ALLOW_THREADS
    if (itemsize == 1) {
        const uint8_t *s = sym.buf;
        for (Py_ssize_t i = 0; i < n; i++) counts[s[i]]++;
    } else {
        const uint16_t *s = sym.buf;
        for (Py_ssize_t i = 0; i < n; i++) counts[s[i]]++;
    }
    for (Py_ssize_t s = (itemsize == 1 ? 256 : 65536) - 1; s >= 0; s--)
        if (counts[s]) {
            top = s + 1;
            break;
        }
    Py_END_ALLOW_THREADS
    if (top > k) {
        PyErr_Format(PyExc_ValueError, "symbol %zd outside the alphabet of %zd", top - 1, k);
    } else {
        int64_t *o = out.buf;
        for (Py_ssize_t s = 0; s < top; s++) o[s] += counts[s];
        Py_INCREF(Py_None);
        result = Py_None;
    }
    free(counts);
done:
    PyBuffer_Release(&sym);
    PyBuffer_Release(&out);
    return result;
}

PyDoc_STRVAR(pack_doc,
"pack(symbols, itemsize, codes, lengths, chunk_size, data, offsets)\n"
"--\n\n"
"Write the Huffman codes of the uint8/uint16 `symbols` into the zeroed uint8 buffer `data`\n"
"(LSB first; `codes` are uint32 with their low `lengths` bits reversed) and the bit offset\n"
"of every chunk after the first into the uint64 buffer `offsets`; returns the bit length.\n"
"ValueError for a symbol without a code, or buffers of the wrong size.");

/* Codes of one chunk; false when a symbol has no code or the output would overflow. */
#define PACK_LOOP(T)                                                                     \
    for (uint64_t c = 0; c < n_chunks && ok; c++) {                                      \
        if (c) offs[c - 1] = byte * 8 + nbits;                                           \
        const T *s = (const T *)sym.buf + c * chunk_size;                                \
        uint64_t m = c + 1 < n_chunks ? chunk_size : n - c * chunk_size;                 \
        for (uint64_t i = 0; i < m; i++) {                                               \
            uint32_t sy = s[i];                                                          \
            if (sy >= k || !len[sy]) {                                                   \
                ok = 0;                                                                  \
                break;                                                                   \
            }                                                                            \
            acc |= (uint64_t)code[sy] << nbits;                                          \
            nbits += len[sy];                                                            \
            if (nbits >= 32) {                                                           \
                if (byte + 4 > size) {                                                   \
                    ok = 0;                                                              \
                    break;                                                               \
                }                                                                        \
                d[byte] = (uint8_t)acc;                                                  \
                d[byte + 1] = (uint8_t)(acc >> 8);                                       \
                d[byte + 2] = (uint8_t)(acc >> 16);                                      \
                d[byte + 3] = (uint8_t)(acc >> 24);                                      \
                byte += 4;                                                               \
                acc >>= 32;                                                              \
                nbits -= 32;                                                             \
            }                                                                            \
        }                                                                                \
    }

static PyObject *py_pack(PyObject *self, PyObject *args) {
    Py_buffer sym = {0}, codes = {0}, lengths = {0}, data = {0}, offsets = {0};
    int itemsize;
    unsigned long long chunk_size;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*iy*y*Kw*w*", &sym, &itemsize, &codes, &lengths, &chunk_size, &data,
                          &offsets))
        return NULL;
    const char *err = NULL;
    uint64_t n = itemsize == 1 || itemsize == 2 ? (uint64_t)sym.len / itemsize : 0;
    uint64_t n_chunks = chunk_size ? (n + chunk_size - 1) / chunk_size : 0;
    Py_ssize_t k = lengths.len;
    if ((itemsize != 1 && itemsize != 2) || sym.len % itemsize) err = "symbols must be uint8 or uint16";
    else if (!chunk_size) err = "chunk_size must be positive";
    else if (k < 1 || k > 65536 || codes.len != 4 * k) err = "codes must be uint32, one per code length";
    else if ((uint64_t)offsets.len != 8 * (n_chunks ? n_chunks - 1 : 0)) err = "wrong number of chunk offsets";
    if (!err)
        for (Py_ssize_t s = 0; s < k; s++)
            if (((const uint8_t *)lengths.buf)[s] > MAX_LEN) err = "code length above 16";
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        goto done;
    }
    const uint32_t *code = codes.buf;
    const uint8_t *len = lengths.buf;
    uint8_t *d = data.buf;
    uint64_t *offs = offsets.buf, size = (uint64_t)data.len, byte = 0, acc = 0;
    unsigned nbits = 0;
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    if (itemsize == 1) {
        PACK_LOOP(uint8_t)
    } else {
        PACK_LOOP(uint16_t)
    }
    if (ok && byte + (nbits + 7) / 8 > size) ok = 0;
    for (unsigned b = 0; ok && b < (nbits + 7) / 8; b++) d[byte + b] = (uint8_t)(acc >> (8 * b));
    Py_END_ALLOW_THREADS
    if (!ok) PyErr_SetString(PyExc_ValueError, "a symbol has no code, or the data buffer is too small");
    else result = PyLong_FromUnsignedLongLong(byte * 8 + nbits);
done:
    PyBuffer_Release(&sym);
    PyBuffer_Release(&codes);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&data);
    PyBuffer_Release(&offsets);
    return result;
}

static PyMethodDef methods[] = {
    {"frequencies", py_frequencies, METH_VARARGS, frequencies_doc},
    {"pack", py_pack, METH_VARARGS, pack_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "dcformat.codec._encode", "Native symbol counts and Huffman packing.", -1, methods,
};

PyMODINIT_FUNC PyInit__encode(void) { return PyModule_Create(&module); }
