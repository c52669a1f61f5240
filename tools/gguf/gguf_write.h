/*
 * gguf_write.h - GGUF v3 writer (library orthoserve_gguf_writer, for the
 * tools, tests and fuzz seeds; not part of the inference library, whose
 * internal.h it uses): metadata of every value
 * type, verbatim copies of key-value pairs from an opened file, tensors given
 * as borrowed buffers or produced on demand by a callback, written atomically
 * to a file (temp file + rename) or to a malloc'd buffer. Files it writes load
 * with eng__gguf_open() and with llama.cpp.
 *
 * Usage:
 *   eng__gguf_writer *w;
 *   eng__gguf_writer_new(&w);
 *   eng__gguf_set_str(w, "general.architecture", "llama");
 *   eng__gguf_set_u32(w, "llama.block_count", 4);
 *   eng__gguf_add_tensor(w, "output_norm.weight", ENG_TYPE_F32, 1, ne, data, nbytes);
 *   eng__gguf_writer_write_file(w, "out.gguf");
 *   eng__gguf_writer_free(w);
 *
 * Errors: every call returns an eng_status; on failure a message naming the
 * problem is kept in the writer (eng__gguf_writer_error()). A writer is not
 * thread-safe; one thread uses it at a time. Key lookups are linear: meant
 * for model files (tens of keys, up to a few thousand tensors).
 */
#ifndef ORTHOSERVE_GGUF_WRITE_H
#define ORTHOSERVE_GGUF_WRITE_H

#include "internal.h"

typedef struct eng__gguf_writer eng__gguf_writer;

/* New empty writer (no keys, no tensors, alignment 32). ENG_EINVAL if out is
 * NULL, ENG_ENOMEM. Free with eng__gguf_writer_free(). */
eng_status eng__gguf_writer_new(eng__gguf_writer **out);
/* Frees the writer and its copies of keys/values; NULL is fine. Tensor data
 * buffers are borrowed and are not freed. */
void eng__gguf_writer_free(eng__gguf_writer *w);
/* Message describing why the most recent call on this writer failed ("" if
 * it succeeded: every call clears it first). Valid until the next call. */
const char *eng__gguf_writer_error(const eng__gguf_writer *w);

/* ---- metadata -----------------------------------------------------------
 * Keys and values are copied. Setting a key that already exists replaces its
 * value in place (the key keeps its position). Keys are 1..65535 bytes.
 * ENG_EINVAL for a NULL writer/key, an empty or over-long key, or a bad
 * general.alignment (must be an integer power of two in [1, 65536]);
 * ENG_ENOMEM. */
eng_status eng__gguf_set_u8(eng__gguf_writer *w, const char *key, uint8_t v);
eng_status eng__gguf_set_i8(eng__gguf_writer *w, const char *key, int8_t v);
eng_status eng__gguf_set_u16(eng__gguf_writer *w, const char *key, uint16_t v);
eng_status eng__gguf_set_i16(eng__gguf_writer *w, const char *key, int16_t v);
eng_status eng__gguf_set_u32(eng__gguf_writer *w, const char *key, uint32_t v);
eng_status eng__gguf_set_i32(eng__gguf_writer *w, const char *key, int32_t v);
eng_status eng__gguf_set_u64(eng__gguf_writer *w, const char *key, uint64_t v);
eng_status eng__gguf_set_i64(eng__gguf_writer *w, const char *key, int64_t v);
eng_status eng__gguf_set_f32(eng__gguf_writer *w, const char *key, float v);
eng_status eng__gguf_set_f64(eng__gguf_writer *w, const char *key, double v);
eng_status eng__gguf_set_bool(eng__gguf_writer *w, const char *key, bool v);
/* NUL-terminated string value. */
eng_status eng__gguf_set_str(eng__gguf_writer *w, const char *key, const char *v);
/* Byte string of len bytes (may hold NULs). */
eng_status eng__gguf_set_strn(eng__gguf_writer *w, const char *key, const char *v, uint64_t len);
/* Array of n numbers (or bools) of value type elem_type (GGUF_VT_UINT8 ...
 * GGUF_VT_FLOAT64, not STRING/ARRAY), read from data in native (= file,
 * little-endian) layout: n * element-size bytes. n may be 0. */
eng_status eng__gguf_set_arr(eng__gguf_writer *w, const char *key, uint32_t elem_type,
                             const void *data, uint64_t n);
/* Array of n NUL-terminated strings. */
eng_status eng__gguf_set_arr_str(eng__gguf_writer *w, const char *key, const char *const *v,
                                 uint64_t n);
/* Array of n byte strings (eng__str views, may hold NULs). */
eng_status eng__gguf_set_arr_strn(eng__gguf_writer *w, const char *key, const eng__str *v,
                                  uint64_t n);
/* Copy key `key` of the opened file g with its type and value bytes verbatim
 * (e.g. a vocabulary from another model). ENG_EINVAL when g has no such key. */
eng_status eng__gguf_copy_kv(eng__gguf_writer *w, const eng__gguf *g, const char *key);
/* Remove a key; ENG_EINVAL if it is not set. */
eng_status eng__gguf_remove_kv(eng__gguf_writer *w, const char *key);
uint64_t eng__gguf_writer_n_kv(const eng__gguf_writer *w);

/* ---- tensors ------------------------------------------------------------
 * Tensors are written in the order they are added. name: 1..63 bytes (the
 * ggml limit), unique. type: a ggml type id with known block geometry (any
 * type the reader accepts, supported by the engine or not). n_dims 1..4, every
 * ne[d] >= 1, ne[0] a multiple of the type's block size, the element count
 * below 2^42. nbytes must equal the size the type implies
 * (eng__gguf_tensor_nbytes()). ENG_EINVAL with a message otherwise. */

/* data is borrowed: it must stay valid and unchanged until the last write
 * call; NULL data writes zeros. */
eng_status eng__gguf_add_tensor(eng__gguf_writer *w, const char *name, uint32_t type,
                                uint32_t n_dims, const int64_t *ne, const void *data,
                                uint64_t nbytes);
/* Producer callback: fill dst with exactly nbytes of the tensor's data. Called
 * once per tensor per write call, in file order, on the writing thread. A
 * non-OK return aborts the write with that status. */
typedef eng_status (*eng__gguf_fill_fn)(void *user, const char *name, void *dst,
                                        uint64_t nbytes);
/* Like eng__gguf_add_tensor, but the data is produced by fill(user, ...) at
 * write time, so no tensor needs to be in memory before the write (files
 * larger than RAM are written tensor by tensor). */
eng_status eng__gguf_add_tensor_fill(eng__gguf_writer *w, const char *name, uint32_t type,
                                     uint32_t n_dims, const int64_t *ne, eng__gguf_fill_fn fill,
                                     void *user);
uint64_t eng__gguf_writer_n_tensors(const eng__gguf_writer *w);

/* Bytes of a tensor of `type` with n_dims dims ne (0 for an unknown type, a
 * row length that is not a multiple of the block, or an overflow). */
uint64_t eng__gguf_tensor_nbytes(uint32_t type, uint32_t n_dims, const int64_t *ne);
/* Block geometry of any ggml type id the reader knows: true and *blck /
 * *type_size filled, or false. */
bool eng__gguf_type_geom(uint32_t type, uint32_t *blck, uint32_t *type_size);

/* ---- output ---------------------------------------------------------------
 * The data section starts at a multiple of the alignment (general.alignment
 * if set, else 32); every tensor starts at an aligned offset; all padding is
 * zero bytes; the file ends with the last tensor padded to the alignment. */

/* Total size the file will have (header, tensor data and padding). */
eng_status eng__gguf_writer_size(const eng__gguf_writer *w, uint64_t *size);
/* Write to path atomically: a temporary file in the same directory
 * (path.XXXXXX), fsync, rename over path; on failure the temporary is
 * removed and path is untouched. ENG_EIO (with errno text), or the status a
 * fill callback returned. Can be called more than once. */
eng_status eng__gguf_writer_write_file(eng__gguf_writer *w, const char *path);
/* Write into a new buffer allocated with eng__malloc: *buf / *size; free it
 * with free(). ENG_ENOMEM, or a fill callback's status. */
eng_status eng__gguf_writer_write_mem(eng__gguf_writer *w, void **buf, size_t *size);

#endif /* ORTHOSERVE_GGUF_WRITE_H */
