/*
 * fileops: the few Linux file calls Node's fs module lacks and a block server needs.
 *   punchHole(fd, offset, length)  fallocate(PUNCH_HOLE|KEEP_SIZE)  -> NBD TRIM, WRITE_ZEROES
 *   zeroRange(fd, offset, length)  fallocate(ZERO_RANGE|KEEP_SIZE)  -> WRITE_ZEROES with NO_HOLE
 *   seekData(fd, offset)           lseek(SEEK_DATA), -1 when no data follows
 *   seekHole(fd, offset)           lseek(SEEK_HOLE)
 *   seekEnd(fd)                    lseek(0, SEEK_END): the size of a block device (fstat says 0)
 *   mapShared(fd, offset, length)  mmap(PROT_READ, MAP_SHARED) as an external ArrayBuffer; the
 *                                  mapping is released (munmap) when the ArrayBuffer is collected
 * All are synchronous: they are metadata operations that return in microseconds.
 * Errors are thrown as JS Errors carrying `code` (e.g. "EOPNOTSUPP") and `errno`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <node_api.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static const char *errno_name(int e) {
  switch (e) {
  case EOPNOTSUPP: return "EOPNOTSUPP";
  case EBADF: return "EBADF";
  case EINVAL: return "EINVAL";
  case ENOSPC: return "ENOSPC";
  case EIO: return "EIO";
  case ENXIO: return "ENXIO";
  case EPERM: return "EPERM";
  case EFBIG: return "EFBIG";
  case EROFS: return "EROFS";
  default: return "EUNKNOWN";
  }
}

static napi_value throw_errno(napi_env env, const char *call, int e) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", call, strerror(e));
  napi_value code, message, err, num;
  napi_create_string_utf8(env, errno_name(e), NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message);
  napi_create_error(env, code, message, &err);
  napi_create_int32(env, -e, &num);
  napi_set_named_property(env, err, "errno", num);
  napi_set_named_property(env, err, "code", code);
  napi_throw(env, err);
  return NULL;
}

/* Reads argc numeric arguments (fd, offsets, lengths) as int64. */
static int get_args(napi_env env, napi_callback_info info, size_t want, int64_t *out) {
  size_t argc = want;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
    napi_throw_type_error(env, NULL, "fileops: wrong number of arguments");
    return -1;
  }
  for (size_t i = 0; i < want; i++) {
    if (napi_get_value_int64(env, argv[i], &out[i]) != napi_ok) {
      napi_throw_type_error(env, NULL, "fileops: arguments must be numbers");
      return -1;
    }
  }
  return 0;
}

static napi_value do_fallocate(napi_env env, napi_callback_info info, int mode, const char *name) {
  int64_t a[3];
  if (get_args(env, info, 3, a) < 0) return NULL;
  if (fallocate((int)a[0], mode | FALLOC_FL_KEEP_SIZE, (off_t)a[1], (off_t)a[2]) < 0)
    return throw_errno(env, name, errno);
  return NULL;
}

/* posix_fadvise(WILLNEED): the kernel reads the range into the page cache in the background
   (NBD_CMD_CACHE, as nbdkit's file plugin does); returns the error number, it never throws: a
   prefetch hint that fails changes nothing. */
static napi_value will_need(napi_env env, napi_callback_info info) {
  int64_t a[3];
  if (get_args(env, info, 3, a) < 0) return NULL;
  napi_value out;
  napi_create_int32(env, posix_fadvise((int)a[0], (off_t)a[1], (off_t)a[2], POSIX_FADV_WILLNEED), &out);
  return out;
}

static napi_value punch_hole(napi_env env, napi_callback_info info) {
  return do_fallocate(env, info, FALLOC_FL_PUNCH_HOLE, "fallocate(PUNCH_HOLE)");
}

static napi_value zero_range(napi_env env, napi_callback_info info) {
  return do_fallocate(env, info, FALLOC_FL_ZERO_RANGE, "fallocate(ZERO_RANGE)");
}

static napi_value do_seek(napi_env env, napi_callback_info info, int whence, const char *name) {
  int64_t a[2];
  if (get_args(env, info, 2, a) < 0) return NULL;
  off_t r = lseek((int)a[0], (off_t)a[1], whence);
  if (r < 0) {
    if (errno == ENXIO) r = -1; /* no data (or hole) at or after offset */
    else return throw_errno(env, name, errno);
  }
  napi_value out;
  napi_create_int64(env, (int64_t)r, &out);
  return out;
}

static napi_value seek_data(napi_env env, napi_callback_info info) {
  return do_seek(env, info, SEEK_DATA, "lseek(SEEK_DATA)");
}

static napi_value seek_hole(napi_env env, napi_callback_info info) {
  return do_seek(env, info, SEEK_HOLE, "lseek(SEEK_HOLE)");
}

static napi_value seek_end(napi_env env, napi_callback_info info) {
  int64_t a[1];
  if (get_args(env, info, 1, a) < 0) return NULL;
  off_t r = lseek((int)a[0], 0, SEEK_END);
  if (r < 0) return throw_errno(env, "lseek(SEEK_END)", errno);
  napi_value out;
  napi_create_int64(env, (int64_t)r, &out);
  return out;
}

static void unmap(napi_env env, void *data, void *hint) {
  (void)env;
  munmap(data, (size_t)(uintptr_t)hint);
}

static napi_value map_shared(napi_env env, napi_callback_info info) {
  int64_t a[3];
  if (get_args(env, info, 3, a) < 0) return NULL;
  void *p = mmap(NULL, (size_t)a[2], PROT_READ, MAP_SHARED, (int)a[0], (off_t)a[1]);
  if (p == MAP_FAILED) return throw_errno(env, "mmap", errno);
  napi_value out;
  if (napi_create_external_arraybuffer(env, p, (size_t)a[2], unmap, (void *)(uintptr_t)a[2], &out) != napi_ok) {
    munmap(p, (size_t)a[2]);
    napi_throw_error(env, NULL, "fileops: cannot wrap the mapping in an ArrayBuffer");
    return NULL;
  }
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"punchHole", NULL, punch_hole, NULL, NULL, NULL, napi_enumerable, NULL},
    {"zeroRange", NULL, zero_range, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seekEnd", NULL, seek_end, NULL, NULL, NULL, napi_enumerable, NULL},
    {"mapShared", NULL, map_shared, NULL, NULL, NULL, napi_enumerable, NULL},
    {"willNeed", NULL, will_need, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
