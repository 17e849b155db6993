#!/usr/bin/env bash
# The native extensions built with AddressSanitizer and UndefinedBehaviorSanitizer, and the tests
# that drive them run against that build: an out-of-bounds read or write, a use after free or
# undefined behaviour aborts the run with a report, where a normal build may go on silently.
#
#   bash fuzz/sanitize.sh [PYTEST ARGS...]    (default: the decoder, matvec and robustness tests)
#
# Works on a copy of the tracked files in a temporary folder (the checkout's own builds are left
# alone), with gcc and the project's Python (.venv/bin/python, or $PYTHON).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git -C "$root" ls-files -z | (cd "$root" && tar --null -cf - -T -) | tar -xf - -C "$work"
include=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
suffix=$("$python" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
for source in dcformat/codec/_native.c dcformat/codec/_encode.c dcformat/codec/_matvec.c \
    converters/compress/_assign.c converters/compress/_kmeans.c; do
    gcc -shared -fPIC -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
        -fno-sanitize-recover=undefined -pthread -I"$include" "$root/$source" \
        -o "$work/${source%.c}$suffix"
done
if [ $# -eq 0 ]; then
    set -- tests/format/test_decode.py tests/format/test_huffman.py tests/format/test_compressed.py \
        tests/robustness
fi
cd "$work"
# Python itself is not instrumented: the sanitizer runtimes are preloaded, leaks not reported.
export ASAN_OPTIONS=detect_leaks=0
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
"$python" -c "
import dcformat.codec._native as n, converters.compress._kmeans as k
assert n.__file__.startswith('$work') and k.__file__.startswith('$work'), (n.__file__, k.__file__)"
"$python" -m pytest -q -p no:cacheprovider "$@"
