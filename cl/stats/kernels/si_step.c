/* SI's plain-SGD step in one pass over a parameter (cl/approaches/regularization/si_fused.py): with U = g + G·(θ − θ̃),
   the task gradient plus the penalty's gradient, the path integral gets lr·U² and the parameter takes the step
   θ − lr·U. θ, g, G, θ̃ and ω are read once and θ and ω written once, where torch's foreach ops need four passes
   (U into g, ω, the step).
   Built by cl/stats/kernels/__init__.py against the OpenMP runtime torch runs, so the loop uses torch's threads. */
#include <stdint.h>

void si_sgd_step(float *restrict theta, const float *restrict grad, const float *restrict factor,
                 const float *restrict anchor, float *restrict path, int64_t n, float lr) {
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; i++) {
        float u = grad[i] + factor[i] * (theta[i] - anchor[i]);
        path[i] += lr * u * u;
        theta[i] -= lr * u;
    }
}
