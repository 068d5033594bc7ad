/*
 * cuda_emu_rt.h - the CUDA runtime calls of the GPU tier (kernels/
 * gpu_tier.cu) for the CPU emulation of cuda_emu.h (which includes this
 * file): stream waits on events, host functions, event queries and flags,
 * host memory registration (with its flags), page-locked host allocation
 * and pointer attributes.
 *
 * STREAMS RUN LATER, each on a host thread of its own (cuda_emu.h's
 * emu_stream): a copy, a kernel, an event record, a wait for an event or a
 * host function queued on a stream runs after the call that queued it,
 * in that stream's order, concurrently with the caller and with other
 * streams. cudaStreamWaitEvent makes the stream wait for the record
 * queued last before it; cudaEventQuery and cudaStreamQuery answer
 * cudaErrorNotReady until then; a host function runs on the stream's
 * thread (a real GPU runs it on a thread of the driver's). The legacy
 * stream (0) runs in the caller and waits for no other stream. So a
 * missing wait or sync between streams, or between a stream and the host,
 * shows here as stale data, as on a GPU; but the interleavings tried are
 * the host scheduler's, not a GPU's: passing here does not prove the
 * order right.
 *
 * What is checked, as the driver does:
 *  - cudaHostRegister: the whole range must be mapped and readable
 *    (/proc/self/maps); a range with a read-only mapping in it needs
 *    cudaHostRegisterReadOnly (the driver pins pages for writing
 *    otherwise, which a read-only mapping refuses); overlapping an already
 *    registered range is cudaErrorHostMemoryAlreadyRegistered; every page
 *    is touched, as pinning faults them in. cudaHostUnregister of a pointer
 *    that is not the start of a registered range is
 *    cudaErrorHostMemoryNotRegistered.
 *  - CUDA_EMU_NO_HOST_REGISTER_READONLY=1 in the environment makes the
 *    emulated device refuse cudaHostRegisterReadOnly (cudaErrorNotSupported),
 *    as old drivers and some platforms do, to exercise fallbacks.
 *  - cudaPointerGetAttributes answers cudaMemoryTypeHost for any address
 *    inside a registered range or a cudaHostAlloc block (interior pointers
 *    too), cudaMemoryTypeUnregistered otherwise (device memory here is
 *    plain malloc and is not tracked).
 *
 * The error codes and device attributes below are constants of the
 * emulator's enums, defined here so that cuda_emu.h need not change; if
 * cuda_emu.h ever lists them itself, delete them here.
 */
#ifndef CUDA_EMU_RT_H
#define CUDA_EMU_RT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mutex>
#include <vector>

#define CUDART_CB

static constexpr cudaError_t cudaErrorNotReady = (cudaError_t)600;
static constexpr cudaError_t cudaErrorHostMemoryAlreadyRegistered = (cudaError_t)712;
static constexpr cudaError_t cudaErrorHostMemoryNotRegistered = (cudaError_t)713;
static constexpr cudaError_t cudaErrorNotSupported = (cudaError_t)801;

/* the emulated device answers emu::sms (non-zero: supported) for these */
static constexpr cudaDeviceAttr cudaDevAttrHostRegisterSupported = (cudaDeviceAttr)99;
static constexpr cudaDeviceAttr cudaDevAttrHostRegisterReadOnlySupported = (cudaDeviceAttr)113;

#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02

#define cudaHostAllocDefault 0x00
#define cudaHostAllocPortable 0x01
#define cudaHostAllocMapped 0x02
#define cudaHostAllocWriteCombined 0x04

#define cudaHostRegisterDefault 0x00
#define cudaHostRegisterPortable 0x01
#define cudaHostRegisterMapped 0x02
#define cudaHostRegisterIoMemory 0x04
#define cudaHostRegisterReadOnly 0x08

enum cudaMemoryType {
	cudaMemoryTypeUnregistered = 0,
	cudaMemoryTypeHost = 1,
	cudaMemoryTypeDevice = 2,
	cudaMemoryTypeManaged = 3,
};

struct cudaPointerAttributes {
	enum cudaMemoryType type;
	int device;
	void *devicePointer;
	void *hostPointer;
};

typedef void (*cudaHostFn_t)(void *userData);

namespace emu_rt {

struct range {
	uintptr_t lo, hi;
	unsigned flags;
	bool host_alloc; /* cudaHostAlloc's, else cudaHostRegister's */
};

inline std::mutex mu;
inline std::vector<range> ranges;

/* Whether [lo, hi) is covered by readable mappings; *writable: all of
 * them writable too. */
inline bool mapped(uintptr_t lo, uintptr_t hi, bool *writable)
{
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return false;
	char line[512];
	uintptr_t at = lo;
	*writable = true;
	while (at < hi && fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		char perm[8];
		if (sscanf(line, "%lx-%lx %7s", &a, &b, perm) != 3)
			continue;
		if (b <= at || a > at)
			continue;
		if (perm[0] != 'r')
			break;
		if (perm[1] != 'w')
			*writable = false;
		at = b;
	}
	fclose(f);
	return at >= hi;
}

inline range *find(uintptr_t p)
{
	for (auto &r : ranges)
		if (p >= r.lo && p < r.hi)
			return &r;
	return nullptr;
}

} // namespace emu_rt

static inline cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e,
					      unsigned flags = 0)
{
	if (!e || flags != 0)
		return cudaErrorInvalidValue;
	const uint64_t gen = emu_event_recorded(e);
	emu::enqueue(s, [e, gen] { e->wait_for(gen); });
	return cudaSuccess;
}

static inline cudaError_t cudaLaunchHostFunc(cudaStream_t s, cudaHostFn_t fn,
					     void *data)
{
	if (!fn)
		return cudaErrorInvalidValue;
	emu::enqueue(s, [fn, data] { fn(data); });
	return cudaSuccess;
}

static inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e,
						   unsigned flags)
{
	if (flags & ~0x07u)
		return cudaErrorInvalidValue;
	return cudaEventCreate(e);
}

static inline cudaError_t cudaEventQuery(cudaEvent_t e)
{
	if (!e)
		return cudaErrorInvalidValue;
	std::lock_guard<std::mutex> lk(e->mu);
	return e->done >= e->recorded ? cudaSuccess : cudaErrorNotReady;
}

static inline cudaError_t cudaStreamQuery(cudaStream_t s)
{
	return !s || s->idle() ? cudaSuccess : cudaErrorNotReady;
}

static inline cudaError_t cudaDeviceSynchronize(void)
{
	emu::sync_all();
	return cudaSuccess;
}

static inline cudaError_t cudaHostRegister(void *p, size_t n, unsigned flags)
{
	if (!p || !n || (flags & ~0x0fu))
		return cudaErrorInvalidValue;
	if ((flags & cudaHostRegisterReadOnly)) {
		const char *no = getenv("CUDA_EMU_NO_HOST_REGISTER_READONLY");
		if (no && *no && strcmp(no, "0"))
			return cudaErrorNotSupported;
	}
	const uintptr_t lo = (uintptr_t)p, hi = lo + n;
	std::lock_guard<std::mutex> g(emu_rt::mu);
	for (auto &r : emu_rt::ranges)
		if (lo < r.hi && r.lo < hi)
			return cudaErrorHostMemoryAlreadyRegistered;
	bool writable = false;
	if (!emu_rt::mapped(lo, hi, &writable))
		return cudaErrorInvalidValue;
	if (!writable && !(flags & cudaHostRegisterReadOnly))
		return cudaErrorInvalidValue;
	/* pinning faults every page in */
	const long pg = sysconf(_SC_PAGESIZE);
	unsigned char sink = 0;
	for (uintptr_t a = lo; a < hi; a = (a / pg + 1) * pg)
		sink = (unsigned char)(sink ^ *(const volatile unsigned char *)a);
	sink = (unsigned char)(sink ^ *(const volatile unsigned char *)(hi - 1));
	__asm__ volatile("" : : "r"(sink));
	emu_rt::ranges.push_back(emu_rt::range{ lo, hi, flags, false });
	return cudaSuccess;
}

static inline cudaError_t cudaHostUnregister(void *p)
{
	emu::sync_all(); /* as CUDA does: no copy still reads it */
	std::lock_guard<std::mutex> g(emu_rt::mu);
	for (size_t i = 0; i < emu_rt::ranges.size(); i++)
		if (emu_rt::ranges[i].lo == (uintptr_t)p &&
		    !emu_rt::ranges[i].host_alloc) {
			emu_rt::ranges.erase(emu_rt::ranges.begin() + (long)i);
			return cudaSuccess;
		}
	return cudaErrorHostMemoryNotRegistered;
}

static inline cudaError_t cudaHostAlloc(void **p, size_t n, unsigned flags)
{
	if (!p || (flags & ~0x07u))
		return cudaErrorInvalidValue;
	*p = malloc(n ? n : 1);
	if (!*p)
		return cudaErrorMemoryAllocation;
	std::lock_guard<std::mutex> g(emu_rt::mu);
	emu_rt::ranges.push_back(
		emu_rt::range{ (uintptr_t)*p, (uintptr_t)*p + (n ? n : 1), flags, true });
	return cudaSuccess;
}

static inline cudaError_t cudaMallocHost(void **p, size_t n)
{
	return cudaHostAlloc(p, n, cudaHostAllocDefault);
}

static inline cudaError_t cudaFreeHost(void *p)
{
	emu::sync_all(); /* cudaFreeHost synchronises the device */
	std::lock_guard<std::mutex> g(emu_rt::mu);
	for (size_t i = 0; i < emu_rt::ranges.size(); i++)
		if (emu_rt::ranges[i].lo == (uintptr_t)p &&
		    emu_rt::ranges[i].host_alloc) {
			emu_rt::ranges.erase(emu_rt::ranges.begin() + (long)i);
			free(p);
			return cudaSuccess;
		}
	return cudaErrorInvalidValue;
}

static inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *a,
						   const void *p)
{
	if (!a)
		return cudaErrorInvalidValue;
	memset(a, 0, sizeof(*a));
	std::lock_guard<std::mutex> g(emu_rt::mu);
	if (emu_rt::find((uintptr_t)p)) {
		a->type = cudaMemoryTypeHost;
		a->hostPointer = (void *)p;
		a->devicePointer = (void *)p;
	} else {
		a->type = cudaMemoryTypeUnregistered;
	}
	return cudaSuccess;
}

#endif /* CUDA_EMU_RT_H */
