using System.Buffers.Binary;
using System.Globalization;
using System.IO.Compression;
using System.Text;
using static TorchSharp.torch;

namespace Valley.Data;

/// <summary>
/// Valley's reader of NumPy's <c>.npy</c> (format versions 1, 2 and 3) and <c>.npz</c> (a zip archive of <c>.npy</c> entries,
/// stored or deflated) files. It reads numeric arrays only (float16/32/64, int8/16/32/64, uint8, bool), in C or Fortran
/// order and either byte order, into tensors that LibTorch owns (C order, native byte order). Object arrays are pickles and
/// are refused without being unpickled. The size a header declares is checked against the bytes the file holds and the
/// memory available before anything is allocated.
/// </summary>
internal static class NumPyFile
{
    static ReadOnlySpan<byte> Magic => [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y'];
    const int MaxHeaderBytes = 1 << 20;
    const int MaxRank = 32;
    // Deflate cannot expand data by more than about 1032:1, so a larger claimed size is a lie (a zip bomb).
    const long MaxDeflateRatio = 1032;

    /// <summary>Whether the bytes begin like a .npy file.</summary>
    public static bool IsNpy(ReadOnlySpan<byte> head) => head.StartsWith(Magic);

    /// <summary>
    /// The arrays of a .npy file (one, named after the file without its extension) or of a .npz archive (named by their entries
    /// without ".npy"), as tensors the caller disposes. Every problem is a <see cref="DataException"/> naming the file.
    /// </summary>
    public static Dictionary<string, Tensor> Read(string path) => Read(path, AvailableMemory());

    /// <summary>Read with a memory budget in bytes (tests pass a small one).</summary>
    internal static Dictionary<string, Tensor> Read(string path, long memoryBudget)
    {
        if (!File.Exists(path)) throw new DataException(path, Directory.Exists(path) ? "is a folder, expected a .npy or .npz file" : "file not found");
        try
        {
            using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            Span<byte> head = stackalloc byte[6];
            int n = fs.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
            fs.Position = 0;
            if (n == 0) throw new DataException(path, "empty file");
            if (IsNpy(head[..n]))
            {
                var name = System.IO.Path.GetFileNameWithoutExtension(path);
                return new() { [name] = ReadArray(path, fs, fs.Length, memoryBudget) };
            }
            if (n >= 4 && head[..4].SequenceEqual("PK\x03\x04"u8)) return ReadNpz(path, fs, memoryBudget);
            throw new DataException(path, "not a NumPy file (a .npy file begins with \\x93NUMPY, a .npz file is a zip archive)");
        }
        catch (InvalidDataException e) { throw new DataException(path, $"corrupt zip or deflate data ({FirstLine(e.Message)})", e); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new DataException(path, $"cannot read: {FirstLine(e.Message)}", e); }
    }

    /// <summary>The names of the arrays a .npz archive holds, without reading them.</summary>
    internal static IReadOnlyList<string> NpzNames(ZipArchive zip) =>
        zip.Entries.Where(e => e.FullName.EndsWith(".npy", StringComparison.Ordinal)).Select(e => e.FullName[..^4]).ToList();

    static Dictionary<string, Tensor> ReadNpz(string path, FileStream fs, long memoryBudget)
    {
        using var zip = new ZipArchive(fs, ZipArchiveMode.Read, leaveOpen: true);
        var entries = zip.Entries.Where(e => e.FullName.EndsWith(".npy", StringComparison.Ordinal)).ToList();
        if (entries.Count == 0)
            throw new DataException(path, zip.GetEntry("archive/data.pkl") is not null || zip.Entries.Any(e => e.FullName.EndsWith("/data.pkl", StringComparison.Ordinal))
                ? "a PyTorch file, not a .npz archive" : "a zip archive without .npy entries, not a .npz file");
        long declared = entries.Sum(e => e.Length);
        if (declared > memoryBudget)
            throw new DataException(path, $"its arrays declare {Size(declared)}; {Size(memoryBudget)} of memory is available");
        var result = new Dictionary<string, Tensor>();
        try
        {
            foreach (var e in entries)
            {
                string name = e.FullName[..^4];
                if (e.CompressedLength > fs.Length || e.Length / MaxDeflateRatio > e.CompressedLength + 1)
                    throw new DataException(path, $"entry {e.FullName} claims {e.Length} bytes from {e.CompressedLength} compressed bytes (a zip bomb?)");
                using var s = e.Open();
                using var crc = new CrcStream(s);
                var t = ReadArray($"{path}[{name}]", crc, e.Length, memoryBudget);
                result[name] = t;
                if (crc.ReadByte() >= 0) throw new DataException(path, $"entry {e.FullName} holds more bytes than its zip header declares");
                if (crc.Crc != e.Crc32) throw new DataException(path, $"entry {e.FullName} does not match its CRC-32 (damaged)");
            }
            return result;
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
    }

    /// <summary>The header of one array: element type, byte order, layout and shape.</summary>
    internal sealed record Header(ScalarType DType, int ItemSize, bool BigEndian, bool Fortran, long[] Shape, string Descr)
    {
        public long Count => Shape.Aggregate(1L, (a, b) => a * b);
    }

    /// <summary>
    /// One .npy array from <paramref name="s"/>, which holds exactly <paramref name="length"/> bytes (the file, or a zip entry as
    /// declared). <paramref name="where"/> names it in errors.
    /// </summary>
    static Tensor ReadArray(string where, Stream s, long length, long memoryBudget)
    {
        var (header, headerBytes) = ReadHeader(where, s);
        long bodyBytes;
        try { bodyBytes = checked(header.Count * header.ItemSize); }
        catch (OverflowException) { throw new DataException(where, $"header declares shape ({string.Join(", ", header.Shape)}), too large"); }
        string declared = $"shape ({string.Join(", ", header.Shape)}) of {header.Descr}";
        if (length - headerBytes < bodyBytes)
            throw new DataException(where, $"truncated: header declares {declared} ({bodyBytes} bytes of data) but {length - headerBytes} bytes follow the header");
        if (length - headerBytes > bodyBytes)
            throw new DataException(where, $"{length - headerBytes - bodyBytes} bytes of trailing data after the {declared} declared in the header");
        if (bodyBytes > memoryBudget / 2)
            throw new DataException(where, $"header declares {declared}, which needs {Size(bodyBytes)} twice to load; {Size(memoryBudget)} of memory is available");

        // Fortran order: the bytes are the C-order array of the reversed shape, transposed back below.
        var stored = header.Fortran ? header.Shape.Reverse().ToArray() : header.Shape;
        var t = empty(stored, header.DType);
        try
        {
            long done = 0;
            if (bodyBytes > 0)
            {
                using var flat = t.view(header.Count);
                var buffer = new byte[(int)Math.Min(bodyBytes, 1 << 20)];
                while (done < bodyBytes)
                {
                    int want = (int)Math.Min(buffer.Length, bodyBytes - done);
                    int got = s.ReadAtLeast(buffer.AsSpan(0, want), want, throwOnEndOfStream: false);
                    if (got < want) throw new DataException(where, $"truncated: header declares {declared} ({bodyBytes} bytes of data) but only {done + got} bytes follow the header");
                    var chunk = buffer.AsSpan(0, want);
                    if (header.BigEndian) SwapBytes(chunk, header.ItemSize);
                    if (header.DType == ScalarType.Bool && chunk.IndexOfAnyExcept((byte)0, (byte)1) >= 0)
                        throw new DataException(where, "bool array holds values other than 0 and 1");
                    // want is a whole number of elements: the buffer's length is a multiple of every item size.
                    using (var part = flat.narrow(0, done / header.ItemSize, want / header.ItemSize)) chunk.CopyTo(part.bytes);
                    done += want;
                }
            }
            if (!header.Fortran || header.Shape.Length < 2) return t;
            using var _ = t;
            using var transposed = t.permute(Enumerable.Range(0, stored.Length).Reverse().Select(i => (long)i).ToArray());
            return transposed.contiguous();
        }
        catch
        {
            t.Dispose();
            throw;
        }
    }

    static void SwapBytes(Span<byte> data, int itemSize)
    {
        if (itemSize == 1) return;
        for (int i = 0; i < data.Length; i += itemSize) data.Slice(i, itemSize).Reverse();
    }

    /// <summary>Magic, version, header length and the header's Python dictionary literal.</summary>
    internal static (Header Header, long Bytes) ReadHeader(string where, Stream s)
    {
        Span<byte> pre = stackalloc byte[12];
        int got = s.ReadAtLeast(pre[..8], 8, throwOnEndOfStream: false);
        if (got < 8 || !pre.StartsWith(Magic)) throw new DataException(where, "not a .npy array (no \\x93NUMPY magic)");
        byte major = pre[6];
        int lengthBytes = major switch { 1 => 2, 2 or 3 => 4, _ => throw new DataException(where, $"unsupported .npy format version {major}.{pre[7]} (Valley reads 1.0, 2.0 and 3.0)") };
        if (s.ReadAtLeast(pre.Slice(8, lengthBytes), lengthBytes, throwOnEndOfStream: false) < lengthBytes) throw new DataException(where, "truncated .npy header");
        long headerLength = lengthBytes == 2 ? BinaryPrimitives.ReadUInt16LittleEndian(pre.Slice(8, 2)) : BinaryPrimitives.ReadUInt32LittleEndian(pre.Slice(8, 4));
        if (headerLength > MaxHeaderBytes) throw new DataException(where, $"corrupt .npy header length {headerLength}");
        var text = new byte[headerLength];
        if (s.ReadAtLeast(text, text.Length, throwOnEndOfStream: false) < text.Length) throw new DataException(where, "truncated .npy header");
        var dict = (major == 3 ? Encoding.UTF8 : Encoding.Latin1).GetString(text);
        return (ParseHeader(where, dict), 8 + lengthBytes + headerLength);
    }

    /// <summary>Parses <c>{'descr': '&lt;f4', 'fortran_order': False, 'shape': (3, 4), }</c>.</summary>
    internal static Header ParseHeader(string where, string dict)
    {
        var p = new LiteralParser(where, dict);
        var fields = p.Dictionary();
        if (!fields.TryGetValue("descr", out var descrObj) || !fields.TryGetValue("fortran_order", out var fortranObj) || !fields.TryGetValue("shape", out var shapeObj))
            throw new DataException(where, "the .npy header lacks 'descr', 'fortran_order' or 'shape'");
        if (descrObj is not string descr)
            throw new DataException(where, "a structured array (record dtype), which Valley does not read: save plain numeric arrays");
        if (fortranObj is not bool fortran) throw new DataException(where, "corrupt .npy header: 'fortran_order' is not True or False");
        if (shapeObj is not List<object> dims || dims.Any(d => d is not long)) throw new DataException(where, "corrupt .npy header: 'shape' is not a tuple of integers");
        if (dims.Count > MaxRank) throw new DataException(where, $"corrupt .npy header: {dims.Count} dimensions");
        var shape = dims.Select(d => (long)d).ToArray();
        if (shape.Any(d => d < 0)) throw new DataException(where, $"corrupt .npy header: negative dimension in ({string.Join(", ", shape)})");
        try { _ = shape.Aggregate(1L, (a, b) => checked(a * b)); }
        catch (OverflowException) { throw new DataException(where, $"header declares shape ({string.Join(", ", shape)}), too large"); }
        var (dtype, size, big) = DType(where, descr);
        return new Header(dtype, size, big, fortran, shape, descr);
    }

    static (ScalarType DType, int Size, bool BigEndian) DType(string where, string descr)
    {
        if (descr.Length < 2) throw new DataException(where, $"unknown dtype '{descr}'");
        char order = descr[0];
        string code = descr[1..];
        if (code.StartsWith('O')) throw new DataException(where, "an object array (dtype 'O', a pickle), which Valley refuses without unpickling: save numeric arrays");
        bool big = order switch
        {
            '<' => false, '>' => true, '|' or '=' => !BitConverter.IsLittleEndian,
            _ => throw new DataException(where, $"unknown dtype '{descr}'"),
        };
        (ScalarType, int) t = code switch
        {
            "f2" => (ScalarType.Float16, 2), "f4" => (ScalarType.Float32, 4), "f8" => (ScalarType.Float64, 8),
            "i1" => (ScalarType.Int8, 1), "i2" => (ScalarType.Int16, 2), "i4" => (ScalarType.Int32, 4), "i8" => (ScalarType.Int64, 8),
            "u1" => (ScalarType.Byte, 1), "b1" => (ScalarType.Bool, 1),
            _ => throw new DataException(where, $"dtype '{descr}' ({Describe(code)}) is not supported; Valley reads float16/32/64, int8/16/32/64, uint8 and bool arrays"),
        };
        return (t.Item1, t.Item2, big && t.Item2 > 1);
    }

    static string Describe(string code) => code[0] switch
    {
        'u' => "unsigned integers", 'c' => "complex numbers", 'U' or 'S' or 'a' => "strings", 'M' or 'm' => "dates or times", 'V' => "raw bytes", 'f' => "floating point",
        'i' => "integers", _ => "an unknown type",
    };

    /// <summary>The little of Python's literal syntax a .npy header uses: a dict of str → str, bool, int or tuple of ints.</summary>
    sealed class LiteralParser(string where, string text)
    {
        int _i;

        DataException Error(string what) => new(where, $"corrupt .npy header ({what}): {text.Trim()}");

        void Skip() { while (_i < text.Length && char.IsWhiteSpace(text[_i])) _i++; }

        bool Accept(char c)
        {
            Skip();
            if (_i < text.Length && text[_i] == c) { _i++; return true; }
            return false;
        }

        void Expect(char c) { if (!Accept(c)) throw Error($"expected '{c}' at {_i}"); }

        public Dictionary<string, object> Dictionary()
        {
            Expect('{');
            var d = new Dictionary<string, object>();
            while (!Accept('}'))
            {
                if (Value() is not string key) throw Error("a key is not a string");
                Expect(':');
                d[key] = Value();
                if (!Accept(',')) { Expect('}'); break; }
            }
            Skip();
            if (_i != text.Length) throw Error("text after the dictionary");
            return d;
        }

        object Value()
        {
            Skip();
            if (_i >= text.Length) throw Error("unexpected end");
            char c = text[_i];
            if (c is '\'' or '"')
            {
                int end = text.IndexOf(c, _i + 1);
                if (end < 0) throw Error("unterminated string");
                var s = text[(_i + 1)..end];
                _i = end + 1;
                return s;
            }
            if (c is '(' or '[')
            {
                char close = c == '(' ? ')' : ']';
                _i++;
                var items = new List<object>();
                while (!Accept(close))
                {
                    items.Add(Value());
                    if (!Accept(',')) { Expect(close); break; }
                }
                return items;
            }
            if (c == '{') throw Error("nested dictionary");
            int start = _i;
            while (_i < text.Length && (char.IsLetterOrDigit(text[_i]) || text[_i] is '-' or '+' or '_')) _i++;
            var word = text[start.._i];
            if (word == "True") return true;
            if (word == "False") return false;
            if (word.EndsWith('L')) word = word[..^1]; // Python 2 longs
            if (long.TryParse(word, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var v)) return v;
            throw Error($"unexpected '{word}'");
        }
    }

    /// <summary>A read-only stream that computes the zip CRC-32 of what passes through (.NET does not check it).</summary>
    sealed class CrcStream(Stream inner) : Stream
    {
        readonly System.IO.Hashing.Crc32 _crc = new();
        public uint Crc => _crc.GetCurrentHashAsUInt32();
        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));
        public override int Read(Span<byte> buffer)
        {
            int n = inner.Read(buffer);
            _crc.Append(buffer[..n]);
            return n;
        }
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    static long AvailableMemory() => GC.GetGCMemoryInfo().TotalAvailableMemoryBytes is > 0 and var m ? m : long.MaxValue;

    static string Size(long bytes) => bytes >= 1e9 ? FormattableString.Invariant($"{bytes / 1e9:0.#} GB") : FormattableString.Invariant($"{bytes / 1e6:0.#} MB");
    static string FirstLine(string s) => s.Split('\n')[0].Trim();
}
