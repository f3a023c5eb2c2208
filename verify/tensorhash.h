/*
 * tensorhash.h - SHA-256 of tensors' bytes, streaming and parallel over
 * tensors (OpenSSL EVP, so SHA-NI where the CPU has it).  Pages already
 * hashed are dropped from the page cache (ck_model_done_range): hashing a
 * model larger than memory does not push everything else out.
 *
 * The digests are what `sha256sum` gives for the tensor's bytes alone, and
 * what `ckpt ls --sha256` prints; `ls --sha256 --diffable` of two
 * checkpoints compares them tensor by tensor whatever their sharding.
 */
#ifndef CK_TENSORHASH_H
#define CK_TENSORHASH_H

#include <stddef.h>
#include "../libtensor/ck.h"
#include "../libtensor/tensor.h"

/*
 * hex[i] gets the lowercase SHA-256 of t[i]'s bytes; jobs threads (1..256)
 * take tensors in turn.  Returns 0, or CK_ENOMEM/CK_EIO with d filled.
 */
int ck_sha256_tensors(const struct ck_tensor *const *t, size_t n, int jobs, char (*hex)[65],
		      struct ck_diag *d);

#endif
