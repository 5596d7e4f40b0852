using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace Valley.Data;

/// <summary>
/// Tensors copied from .NET arrays into memory that LibTorch allocates. <c>torch.tensor(array)</c> pins the managed array and
/// uses it as the tensor's storage, so where the data starts depends on earlier .NET allocations; MKL's float32 kernels pick
/// code paths by alignment, and results of the same computation differed in the last bits with, e.g., the length of an
/// output folder's name. LibTorch aligns its own allocations (to 64 bytes on the CPU), so copies made here compute the same
/// everywhere, and later changes to the array do not reach the tensor.
/// </summary>
internal static class OwnedTensor
{
    /// <summary>Bytes copied per step: a span (<see cref="Tensor.bytes"/>) holds at most int.MaxValue bytes.</summary>
    const int ChunkBytes = 1 << 30;

    /// <summary>A new tensor of the given shape (one dimension of the array's length if none) holding a copy of the values.</summary>
    public static Tensor From<T>(T[] values, params long[] shape) where T : unmanaged =>
        From<T>(values, shape.Length == 0 ? [values.LongLength] : shape, ChunkBytes);

    internal static Tensor From<T>(ReadOnlySpan<T> values, long[] shape, int chunkBytes) where T : unmanaged
    {
        long count = shape.Aggregate(1L, (a, d) => a * d);
        if (count != values.Length) throw new ArgumentException($"{values.Length} values for shape [{string.Join(", ", shape)}]", nameof(values));
        var t = empty(shape, DType<T>());
        try
        {
            if (count == 0) return t;
            using var flat = t.view(count);
            int step = Math.Max(1, chunkBytes / Unsafe.SizeOf<T>());
            for (int start = 0, n; start < values.Length; start += n)
            {
                n = Math.Min(step, values.Length - start);
                using var part = flat.narrow(0, start, n);
                MemoryMarshal.AsBytes(values.Slice(start, n)).CopyTo(part.bytes);
            }
            return t;
        }
        catch { t.Dispose(); throw; }
    }

    static ScalarType DType<T>() =>
        typeof(T) == typeof(float) ? ScalarType.Float32
        : typeof(T) == typeof(double) ? ScalarType.Float64
        : typeof(T) == typeof(long) ? ScalarType.Int64
        : typeof(T) == typeof(byte) ? ScalarType.Byte
        : throw new NotSupportedException($"no tensor type for {typeof(T).Name}");
}
