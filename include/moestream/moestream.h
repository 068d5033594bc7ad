/*
 * moestream.h - the public API of libmoestream.
 *
 * Today: the GGUF reader and expert map (model.h) and GPU discovery
 * (kernels.h). The client side of moestreamd's socket (connect, acquire,
 * release, prefetch, stats) will be declared here.
 *
 * Link with `pkg-config --libs moestream`.
 */
#ifndef MOESTREAM_H
#define MOESTREAM_H

#define MOESTREAM_VERSION_MAJOR 0
#define MOESTREAM_VERSION_MINOR 1
#define MOESTREAM_VERSION_PATCH 0

#include "kernels.h"
#include "model.h"
#include "util.h"

#endif /* MOESTREAM_H */
