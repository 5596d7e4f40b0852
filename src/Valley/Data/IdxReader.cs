using System.Buffers.Binary;
using System.IO.Compression;

namespace Valley.Data;

/// <summary>
/// Reader for the IDX format of MNIST and Fashion-MNIST (LeCun et al.), gzip-compressed or raw.
/// Header: two zero bytes, a type code, the number of dimensions, then each dimension as a big-endian int32.
/// Every malformed file gives a <see cref="DataException"/> naming the file.
/// </summary>
public static class IdxReader
{
    /// <summary>The content of an IDX file: its dimensions and its values as doubles-free raw arrays.</summary>
    public sealed record IdxArray(int[] Shape, byte[]? Bytes, float[]? Floats)
    {
        public long Count => Shape.Length == 0 ? 0 : Shape[0];
        public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
    }

    const long MaxElements = 1L << 31;

    public static IdxArray Read(string path)
    {
        if (!File.Exists(path)) throw new DataException(path, Directory.Exists(path) ? "is a folder, expected an IDX file" : "file not found");
        byte[] raw;
        try { raw = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new DataException(path, $"cannot read: {e.Message}", e); }
        if (raw.Length >= 2 && raw[0] == 0x1f && raw[1] == 0x8b)
        {
            try
            {
                using var gz = new GZipStream(new MemoryStream(raw), CompressionMode.Decompress);
                using var ms = new MemoryStream();
                gz.CopyTo(ms);
                raw = ms.ToArray();
            }
            catch (InvalidDataException e) { throw new DataException(path, $"corrupt gzip data ({e.Message})", e); }
            catch (EndOfStreamException e) { throw new DataException(path, "truncated gzip data", e); }
        }
        return Parse(path, raw);
    }

    internal static IdxArray Parse(string path, ReadOnlySpan<byte> raw)
    {
        if (raw.Length == 0) throw new DataException(path, "empty file");
        if (raw.Length < 4) throw new DataException(path, $"too short for an IDX header ({raw.Length} bytes)");
        if (raw[0] != 0 || raw[1] != 0)
            throw new DataException(path, $"wrong magic number 0x{raw[0]:x2}{raw[1]:x2}{raw[2]:x2}{raw[3]:x2}: not an IDX file");
        byte type = raw[2];
        int ndim = raw[3];
        int elemSize = type switch { 0x08 => 1, 0x09 => 1, 0x0B => 2, 0x0C => 4, 0x0D => 4, 0x0E => 8, _ => 0 };
        if (elemSize == 0) throw new DataException(path, $"unknown IDX element type 0x{type:x2}");
        if (ndim < 1 || ndim > 4) throw new DataException(path, $"unsupported number of dimensions {ndim} (expected 1 to 4)");
        int header = 4 + 4 * ndim;
        if (raw.Length < header) throw new DataException(path, $"truncated header ({raw.Length} bytes, need {header})");
        var shape = new int[ndim];
        long count = 1;
        for (int i = 0; i < ndim; i++)
        {
            shape[i] = BinaryPrimitives.ReadInt32BigEndian(raw.Slice(4 + 4 * i, 4));
            if (shape[i] <= 0) throw new DataException(path, $"dimension {i} is {shape[i]}, must be positive");
            count *= shape[i];
            if (count > MaxElements) throw new DataException(path, "declares more than 2^31 elements");
        }
        long expected = header + count * elemSize;
        if (raw.Length < expected)
            throw new DataException(path, $"truncated: header declares {string.Join("×", shape)} values ({expected} bytes) but the file has {raw.Length} bytes");
        if (raw.Length > expected)
            throw new DataException(path, $"{raw.Length - expected} bytes of trailing data after the {string.Join("×", shape)} values declared in the header");
        var body = raw.Slice(header, (int)(count * elemSize));
        if (type == 0x08) return new IdxArray(shape, body.ToArray(), null);
        var floats = new float[count];
        for (long i = 0; i < count; i++)
        {
            var s = body.Slice((int)(i * elemSize), elemSize);
            floats[i] = type switch
            {
                0x09 => (sbyte)s[0],
                0x0B => BinaryPrimitives.ReadInt16BigEndian(s),
                0x0C => BinaryPrimitives.ReadInt32BigEndian(s),
                0x0D => BinaryPrimitives.ReadSingleBigEndian(s),
                _ => (float)BinaryPrimitives.ReadDoubleBigEndian(s),
            };
            if (!float.IsFinite(floats[i])) throw new DataException(path, $"value {i} is not finite ({floats[i]})");
        }
        return new IdxArray(shape, null, floats);
    }

    /// <summary>Write a uint8 IDX file (optionally gzip-compressed); used by tests and tools.</summary>
    public static void WriteBytes(string path, int[] shape, byte[] values, bool gzip)
    {
        using var ms = new MemoryStream();
        ms.Write([0, 0, 0x08, (byte)shape.Length]);
        Span<byte> b = stackalloc byte[4];
        foreach (var d in shape) { BinaryPrimitives.WriteInt32BigEndian(b, d); ms.Write(b); }
        ms.Write(values);
        var bytes = ms.ToArray();
        if (gzip)
        {
            using var outMs = new MemoryStream();
            using (var gz = new GZipStream(outMs, CompressionLevel.Fastest, leaveOpen: true)) gz.Write(bytes);
            bytes = outMs.ToArray();
        }
        File.WriteAllBytes(path, bytes);
    }
}
