/* Benchmark helper, built by benchmarks/bench_instructions.py into
 * benchmarks/out/cg_client.so and loaded with ctypes by the receivers it runs under
 * valgrind --tool=callgrind --instr-atstart=no: callgrind's client request that switches
 * instrumentation on (valgrind/callgrind.h; a few no-op instructions outside valgrind).
 * The receiver calls it once it is set up, so Python's start-up and imports run at
 * valgrind's uninstrumented speed (3x faster).  Nothing here is on the measured path:
 * the counting is bracketed by callgrind's --dump-before triggers (bench_instructions).
 */
#include <valgrind/callgrind.h>

int cg_on_valgrind(void) { return (int)RUNNING_ON_VALGRIND; }

void cg_start_instrumentation(void) { CALLGRIND_START_INSTRUMENTATION; }

