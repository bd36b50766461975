/* BLAKE3's avx2 code for x86-64, the upstream assembly, found through the include path
 * setup.py gives (the build names only sources of ours; one file each, as their labels clash). */
#include "blake3_avx2_x86-64_unix.S"
