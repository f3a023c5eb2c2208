/*
 * tensorhash.c - SHA-256 of tensors, parallel over tensors (see tensorhash.h).
 */
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include "../libtensor/model.h"
#include "tensorhash.h"

struct hash_job {
	const struct ck_tensor *const *t;
	char (*hex)[65];
	size_t n;
	atomic_size_t next;
	atomic_int failed;
};

static int hash_one(const struct ck_tensor *t, char *hex)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char md[32];
	unsigned int mdlen = 0;
	const uint8_t *p = t->data;
	uint64_t left = t->nbytes;

	if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
		EVP_MD_CTX_free(ctx);
		return -1;
	}
	while (left) {
		size_t chunk = left > (8u << 20) ? (8u << 20) : (size_t)left;
		if (!EVP_DigestUpdate(ctx, p, chunk))
			break;
		ck_model_done_range(p, chunk);
		p += chunk;
		left -= chunk;
	}
	if (left || !EVP_DigestFinal_ex(ctx, md, &mdlen)) {
		EVP_MD_CTX_free(ctx);
		return -1;
	}
	EVP_MD_CTX_free(ctx);
	for (unsigned i = 0; i < mdlen; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	return 0;
}

static void *worker(void *arg)
{
	struct hash_job *j = arg;
	for (;;) {
		size_t i = atomic_fetch_add(&j->next, 1);
		if (i >= j->n)
			break;
		if (hash_one(j->t[i], j->hex[i]) < 0)
			atomic_store(&j->failed, 1);
	}
	return NULL;
}

int ck_sha256_tensors(const struct ck_tensor *const *t, size_t n, int jobs, char (*hex)[65],
		      struct ck_diag *d)
{
	pthread_t th[256];
	struct hash_job j = { .t = t, .hex = hex, .n = n };
	int started = 0;

	atomic_init(&j.next, 0);
	atomic_init(&j.failed, 0);
	if (jobs > 256)
		jobs = 256;
	for (int i = 1; i < jobs; i++)
		if (pthread_create(&th[started], NULL, worker, &j) == 0)
			started++;
	worker(&j);
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	if (atomic_load(&j.failed))
		return ck_fail(d, CK_EIO, "SHA-256 failed (OpenSSL)");
	return 0;
}
