/* Without CUDA=1 the CUDA backend is this stub: selecting it fails with one clear line, and the
 * library links the same either way. */
#ifndef OZ_HAVE_CUDA
#include "backend/backend.h"

oz_status oz_backend_cuda_create(oz_backend *be, int device, oz_err *err) {
    (void)be;
    (void)device;
    return oz_fail(err, OZ_ERR_INPUT, "--device cuda: this ounce was built without CUDA (make CUDA=1)");
}

oz_status oz_backend_cuda_set_tf32(oz_backend *be, int on, oz_err *err) {
    (void)be;
    (void)on;
    return oz_fail(err, OZ_ERR_INPUT, "--device cuda: this ounce was built without CUDA (make CUDA=1)");
}
#else
typedef int oz_cuda_stub_unused; /* ISO C forbids an empty translation unit */
#endif
