/*
 * files.h - the non-tensor files of a model folder (config.json,
 * generation_config.json, tokenizer files, chat_template.jinja, README...),
 * copied into an output folder by one helper every tool shares.
 */
#ifndef CK_FILES_H
#define CK_FILES_H

#include "ck.h"
#include "output.h"

/*
 * Copy every regular file of src_dir into the output folder o, except
 * weights (*.safetensors, the safetensors index, *.bin, *.pt, *.pth, *.gguf,
 * *.h5, *.msgpack), hidden files, sub-folders, and the names in skip[0..nskip)
 * (files the tool writes itself, e.g. a rewritten config.json).  Returns the
 * number of files copied, or a negative status.
 */
int ck_copy_aux_files(struct ck_out *o, const char *src_dir, const char *const *skip, size_t nskip,
		      struct ck_diag *d);

/*
 * Read a whole small file (at most max bytes) into a new NUL-terminated
 * buffer the caller frees.  A missing file is CK_EINVAL with errno ENOENT.
 */
int ck_read_file(const char *path, size_t max, char **buf, size_t *len, struct ck_diag *d);

#endif
