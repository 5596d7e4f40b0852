using System.Collections;
using System.Globalization;
using System.IO.Compression;
using System.Runtime.CompilerServices;
using System.Text.RegularExpressions;
using Razorvine.Pickle;
using Razorvine.Pickle.Objects;
using static TorchSharp.torch;

namespace Valley.Models;

/// <summary>
/// Valley's reader of <c>torch.save(model.state_dict())</c> files: the zip archive PyTorch writes since 1.6, with a pickled
/// dictionary in <c>&lt;archive&gt;/data.pkl</c> whose tensors are views (offset, sizes, strides) of storages kept in
/// <c>&lt;archive&gt;/data/&lt;key&gt;</c>. Tensors load exactly as <c>torch.load</c> gives them, as contiguous copies, also when
/// they share a storage, start at an offset or are not contiguous.
/// <para>
/// The pickle is read by Razorvine's unpickler, which never calls Python code: it knows only the constructors registered
/// here (tensor rebuilds, OrderedDict, storage types) and turns any other global into an inert ClassDict, which is refused.
/// Nothing reaches LibTorch before the whole file has been checked: every view lies inside its storage, every storage entry
/// holds exactly the bytes its declared element count needs (never more is inflated), and the copies fit in memory.
/// </para>
/// </summary>
internal static partial class PyTorchStateDict
{
    const string NotAStateDict = "not a PyTorch state_dict file";
    const string Corrupt = "corrupt PyTorch state_dict file";
    const long MaxPickleBytes = 64L << 20;
    const int MaxRank = 64;
    // So that a storage's size in bytes (up to 16 per element) cannot overflow.
    const long MaxElements = 1L << 56;
    // Deflate cannot expand data by more than about 1032:1, so a larger claimed size is a lie (a zip bomb).
    const long MaxDeflateRatio = 1032;

    sealed class StorageType(string name, ScalarType dtype, int elementSize) : IObjectConstructor
    {
        public string Name { get; } = name;
        public ScalarType DType { get; } = dtype;
        public int ElementSize { get; } = elementSize;
        // Only ever an argument of a persistent id; called, it would be a storage outside a tensor.
        public object construct(object[] args) => throw new Refusal($"it builds a torch.{Name} outside a tensor");
    }

    static readonly StorageType[] StorageTypes =
    [
        new("DoubleStorage", ScalarType.Float64, 8), new("FloatStorage", ScalarType.Float32, 4),
        new("HalfStorage", ScalarType.Float16, 2), new("BFloat16Storage", ScalarType.BFloat16, 2),
        new("LongStorage", ScalarType.Int64, 8), new("IntStorage", ScalarType.Int32, 4), new("ShortStorage", ScalarType.Int16, 2),
        new("CharStorage", ScalarType.Int8, 1), new("ByteStorage", ScalarType.Byte, 1), new("BoolStorage", ScalarType.Bool, 1),
        new("ComplexFloatStorage", ScalarType.ComplexFloat32, 8), new("ComplexDoubleStorage", ScalarType.ComplexFloat64, 16),
    ];

    sealed record Storage(StorageType Type, string Key, long Elements);

    /// <summary>A tensor as the pickle describes it; <paramref name="Order"/> counts rebuilds, to keep the pickle's order of entries.</summary>
    sealed record View(Storage Storage, long Offset, long[] Size, long[] Stride, long Order);

    /// <summary>A file that is well-formed but not a dictionary of name → tensor; the reason reads after "not a PyTorch state_dict file: ".</summary>
    sealed class Refusal(string reason) : Exception(reason);

    public static Dictionary<string, Tensor> Read(string path)
    {
        long fileLength = new FileInfo(path).Length;
        using var fs = File.OpenRead(path);
        RefuseNonZip(path, fs);
        using var zip = new ZipArchive(fs, ZipArchiveMode.Read);
        var pkls = zip.Entries.Where(e => e.FullName.EndsWith("/data.pkl", StringComparison.Ordinal) && e.FullName.IndexOf('/') == e.FullName.Length - "/data.pkl".Length).ToList();
        if (pkls.Count != 1)
            throw new WeightsException(path, $"{NotAStateDict}: {(pkls.Count == 0 ? "no" : "more than one")} <archive>/data.pkl in the zip archive (torch.save writes exactly one)");
        string prefix = pkls[0].FullName[..^"/data.pkl".Length];
        var byteOrder = zip.GetEntry(prefix + "/byteorder");
        if (byteOrder is not null && ReadEntry(path, byteOrder, 16).AsSpan().Trim("\r\n "u8).SequenceEqual("big"u8))
            throw new WeightsException(path, $"{NotAStateDict}: it was written on a big-endian machine, which Valley does not read");

        object root;
        try { root = StateDictUnpickler.Load(ReadEntry(path, pkls[0], MaxPickleBytes)); }
        catch (Refusal r) { throw new WeightsException(path, $"{NotAStateDict}: {r.Message}", r); }
        catch (PickleException e) when (ClassDictArguments().Match(e.Message) is { Success: true } m)
        {
            throw new WeightsException(path, $"{NotAStateDict}: it calls {m.Groups[1].Value}, which Valley never runs (only tensors are loaded; pickled code and other objects are refused)", e);
        }

        var views = Views(path, root);
        CheckLayout(path, views);
        return Materialize(path, fileLength, zip, prefix, views);
    }

    /// <summary>A pre-1.6 torch.save file is a bare pickle stream; say so instead of "not a zip archive".</summary>
    static void RefuseNonZip(string path, FileStream fs)
    {
        Span<byte> head = stackalloc byte[14];
        int n = fs.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        fs.Position = 0;
        if (n >= 4 && head[..4].SequenceEqual((ReadOnlySpan<byte>)[0x50, 0x4b, 0x03, 0x04])) return;
        // Legacy files begin with PROTO 2 and the pickled magic number 0x1950a86a20f9469cfc6c (LONG1, 10 bytes).
        ReadOnlySpan<byte> legacy = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
        if (n == legacy.Length && head.SequenceEqual(legacy))
            throw new WeightsException(path, "a PyTorch file in the legacy format of torch.save before PyTorch 1.6, which Valley does not read: load it and save it again with PyTorch 1.6 or newer");
        if (n > 0 && head[0] == 0x80)
            throw new WeightsException(path, $"{NotAStateDict}: a bare pickle, not the zip archive torch.save writes");
        throw new WeightsException(path, $"{NotAStateDict}: not a zip archive (torch.save writes a zip archive)");
    }

    /// <summary>The whole entry, refused if it holds more than <paramref name="limit"/> bytes whatever its header says.</summary>
    static byte[] ReadEntry(string path, ZipArchiveEntry entry, long limit)
    {
        if (entry.Length > limit) throw new WeightsException(path, $"{NotAStateDict}: {entry.FullName} is {entry.Length} bytes, more than the {limit} Valley reads");
        using var s = entry.Open();
        var buffer = new byte[entry.Length];
        int n = s.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
        if (n != buffer.Length || s.ReadByte() >= 0)
            throw new WeightsException(path, $"{Corrupt}: {entry.FullName} does not hold the {entry.Length} bytes its zip header declares");
        if (System.IO.Hashing.Crc32.HashToUInt32(buffer) != entry.Crc32) throw new WeightsException(path, $"{Corrupt}: {entry.FullName} does not match its CRC-32");
        return buffer;
    }

    [GeneratedRegex(@"ClassDict \(for ([^)]*)\)")]
    private static partial Regex ClassDictArguments();

    /// <summary>The pickled object as name → view, or a refusal that says what it is instead.</summary>
    static List<(string Name, View View)> Views(string path, object? root)
    {
        if (root is not Hashtable dict)
            throw new WeightsException(path, $"{NotAStateDict}: the pickled object is {Describe(root)}, not a dictionary of name → tensor");
        var views = new List<(string Name, View View)>(dict.Count);
        foreach (var key in dict.Keys)
        {
            if (key is not string name)
                throw new WeightsException(path, $"{NotAStateDict}: {KeyText(key)} is not a parameter name: only dictionaries of name → tensor are loaded");
            var value = dict[key];
            if (value is not View v)
                throw new WeightsException(path, $"{NotAStateDict}: entry '{name}' is {Describe(value)}, not a tensor: only dictionaries of name → tensor are loaded"
                    + (value is Hashtable ? " (a training checkpoint? save model.state_dict() itself)" : ""));
            views.Add((name, v));
        }
        // Razorvine fills a dictionary in reverse within each SETITEMS; tensors are rebuilt in the pickle's order.
        return [.. views.OrderBy(v => v.View.Order)];
    }

    static string KeyText(object? key) => key switch
    {
        int or long or System.Numerics.BigInteger => $"key {Convert.ToString(key, CultureInfo.InvariantCulture)} (an integer)",
        double d => $"key {d.ToString("R", CultureInfo.InvariantCulture)} (a float)",
        bool b => $"key {(b ? "True" : "False")} (a boolean)",
        null => "key None",
        _ => $"a key that is {Describe(key)}",
    };

    static string Describe(object? o) => o switch
    {
        null => "None",
        View => "a tensor",
        string => "a string",
        bool => "a boolean",
        int or long or System.Numerics.BigInteger => "an integer",
        double => "a float",
        byte[] => "a bytes object",
        Hashtable => "a dictionary",
        ArrayList => "a list",
        object[] => "a tuple",
        ClassDict c => $"a {c.ClassName} object",
        IObjectConstructor => "a class or function",
        // Razorvine's stack mark, left where a value should be.
        _ when o.GetType() == typeof(object) => "a stray pickle MARK",
        _ => $"a {o.GetType().Name} object",
    };

    /// <summary>Every view must lie inside its storage (as LibTorch would check, but before anything is built).</summary>
    static void CheckLayout(string path, List<(string Name, View View)> views)
    {
        foreach (var (name, v) in views)
        {
            string where = $"tensor '{name}' [{string.Join("×", v.Size)}] at offset {v.Offset} with strides ({string.Join(", ", v.Stride)})";
            if (v.Size.Length != v.Stride.Length)
                throw new WeightsException(path, $"{Corrupt}: tensor '{name}' has {v.Size.Length} sizes but {v.Stride.Length} strides");
            if (v.Offset < 0 || v.Size.Any(s => s < 0) || v.Stride.Any(s => s < 0))
                throw new WeightsException(path, $"{Corrupt}: {where} has a negative size, stride or offset");
            try
            {
                long elements = 1, last = v.Offset;
                for (int d = 0; d < v.Size.Length; d++)
                {
                    elements = checked(elements * v.Size[d]);
                    if (v.Size[d] > 0) last = checked(last + (v.Size[d] - 1) * v.Stride[d]);
                }
                bool outside = elements > 0 ? last >= v.Storage.Elements : v.Offset > v.Storage.Elements;
                if (outside)
                    throw new WeightsException(path, $"{Corrupt}: {where} reaches element {last} of its storage '{v.Storage.Key}', which holds {v.Storage.Elements} elements");
                _ = checked(elements * v.Storage.Type.ElementSize);
            }
            catch (OverflowException e) { throw new WeightsException(path, $"{Corrupt}: {where} is too large", e); }
        }
    }

    /// <summary>Reads each storage once into a LibTorch tensor and copies every view out of it as a contiguous tensor.</summary>
    static Dictionary<string, Tensor> Materialize(string path, long fileLength, ZipArchive zip, string prefix, List<(string Name, View View)> views)
    {
        var storages = views.Select(v => v.View.Storage).Distinct().ToList();
        long needed;
        try { needed = checked(storages.Sum(s => s.Elements * s.Type.ElementSize) + views.Sum(v => v.View.Size.Aggregate(1L, (a, b) => a * b) * v.View.Storage.Type.ElementSize)); }
        catch (OverflowException e) { throw new WeightsException(path, $"{Corrupt}: its tensors are too large", e); }
        // Views with zero strides repeat elements, so a few bytes of storage can ask for terabytes of copies.
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (available > 0 && needed > available / 2)
            throw new WeightsException(path, $"too large: its tensors need {needed / (1 << 20)} MiB once copied out of their storages, more than half of this machine's memory");

        var read = new Dictionary<Storage, Tensor>();
        var result = new Dictionary<string, Tensor>();
        try
        {
            foreach (var s in storages) read[s] = ReadStorage(path, fileLength, zip, prefix, s);
            foreach (var (name, v) in views)
            {
                var t = empty(v.Size, v.Storage.Type.DType);
                result[name] = t;
                if (t.numel() == 0) continue;
                using var view = read[v.Storage].as_strided(v.Size, v.Stride, v.Offset);
                t.copy_(view);
            }
            return result;
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
        finally
        {
            foreach (var t in read.Values) t.Dispose();
        }
    }

    /// <summary>
    /// Inflates exactly the storage's declared size into a new LibTorch tensor (chunk by chunk, never more than that plus one
    /// byte) and refuses an entry that is shorter or longer. .NET stops inflating at the size the zip header gives, so an
    /// entry whose header understates its size would be cut short silently: its CRC-32 then no longer matches.
    /// </summary>
    static Tensor ReadStorage(string path, long fileLength, ZipArchive zip, string prefix, Storage s)
    {
        string entryName = $"{prefix}/data/{s.Key}";
        var entry = zip.GetEntry(entryName) ?? throw new WeightsException(path, $"{Corrupt}: storage entry {entryName} is missing");
        long bytes = s.Elements * s.Type.ElementSize;
        if (entry.Length != bytes)
            throw new WeightsException(path, $"{Corrupt}: storage entry {entryName} is {entry.Length} bytes, but its {s.Elements} elements of torch.{s.Type.Name} need {bytes}");
        if (entry.CompressedLength > fileLength || bytes / MaxDeflateRatio > entry.CompressedLength + 1)
            throw new WeightsException(path, $"{Corrupt}: storage entry {entryName} claims {bytes} bytes from {entry.CompressedLength} compressed bytes (a zip bomb?)");
        var t = empty([s.Elements], s.Type.DType);
        try
        {
            using var stream = entry.Open();
            var buffer = new byte[(int)Math.Min(bytes, 1 << 20)];
            long done = 0;
            // The zip format's CRC-32, which .NET does not check when it reads an entry.
            var crc = new System.IO.Hashing.Crc32();
            while (done < bytes)
            {
                int want = (int)Math.Min(buffer.Length, bytes - done);
                int got = stream.ReadAtLeast(buffer.AsSpan(0, want), want, throwOnEndOfStream: false);
                if (got < want) throw new WeightsException(path, $"{Corrupt}: storage entry {entryName} holds {done + got} bytes, fewer than the {bytes} its {s.Elements} elements need");
                if (s.Type.DType == ScalarType.Bool && buffer.AsSpan(0, want).IndexOfAnyExcept((byte)0, (byte)1) >= 0)
                    throw new WeightsException(path, $"{Corrupt}: storage entry {entryName} holds bool values other than 0 and 1");
                // want is a whole number of elements: the buffer's length is a multiple of every element size.
                using (var part = t.narrow(0, done / s.Type.ElementSize, want / s.Type.ElementSize))
                    buffer.AsSpan(0, want).CopyTo(part.bytes);
                crc.Append(buffer.AsSpan(0, want));
                done += want;
            }
            if (stream.ReadByte() >= 0)
                throw new WeightsException(path, $"{Corrupt}: storage entry {entryName} holds more than the {bytes} bytes its {s.Elements} elements need");
            if (crc.GetCurrentHashAsUInt32() != entry.Crc32)
                throw new WeightsException(path, $"{Corrupt}: storage entry {entryName} does not match its CRC-32 (damaged, or longer than its zip header says)");
            return t;
        }
        catch
        {
            t.Dispose();
            throw;
        }
    }

    static long Integer(object? o, string what) => o switch
    {
        int i => i,
        long l => l,
        _ => throw new Refusal($"{what} is {Describe(o)}, not an integer"),
    };

    static long[] Integers(object? o, string what) =>
        o is object[] tuple && tuple.Length <= MaxRank ? tuple.Select(x => Integer(x, what)).ToArray()
        : throw new Refusal($"{what} is {Describe(o)}, not a tuple of at most {MaxRank} integers");

    /// <summary><c>torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks[, metadata])</c> and the older <c>_rebuild_tensor(storage, offset, size, stride)</c>: recorded, not built.</summary>
    static long _rebuilt;

    sealed class RebuildTensor(bool v2) : IObjectConstructor
    {
        public object construct(object[] args)
        {
            if (v2 ? args.Length is not (6 or 7) : args.Length != 4)
                throw new Refusal($"a tensor is rebuilt with {args.Length} arguments, not {(v2 ? "6 or 7" : "4")}");
            if (args[0] is not Storage storage) throw new Refusal($"a tensor is rebuilt from {Describe(args[0])}, not from a storage");
            return new View(storage, Integer(args[1], "a tensor's storage offset"), Integers(args[2], "a tensor's size"), Integers(args[3], "a tensor's stride"),
                Interlocked.Increment(ref _rebuilt));
        }
    }

    sealed class RefuseParameter : IObjectConstructor
    {
        public object construct(object[] args) =>
            throw new Refusal("it holds nn.Parameter objects, as a pickled module (torch.save(model)) or state_dict(keep_vars=True) does; save torch.save(model.state_dict()) instead");
    }

    /// <summary>PyTorch's OrderedDict: a dictionary that accepts BUILD.</summary>
    sealed class StateDictionary : Hashtable
    {
        // BUILD sets a state_dict's attributes (its _metadata of module versions), which Valley does not need.
        public void __setstate__(Hashtable state) { }
    }

    /// <summary><c>OrderedDict()</c> (torch.save, then SETITEMS) or <c>OrderedDict(pairs)</c> (TorchSharp.PyBridge writes <c>OrderedDict(())</c>).</summary>
    sealed class OrderedDictConstructor : IObjectConstructor
    {
        public object construct(object[] args)
        {
            var dict = new StateDictionary();
            if (args.Length == 0) return dict;
            if (args.Length > 1 || args[0] is not IList pairs) throw new Refusal("it builds an OrderedDict from arguments other than a sequence of pairs");
            foreach (var pair in pairs)
            {
                if (pair is not IList { Count: 2 } kv) throw new Refusal("it builds an OrderedDict from arguments other than a sequence of pairs");
                dict[kv[0]!] = kv[1];
            }
            return dict;
        }
    }

    sealed class StateDictUnpickler : Unpickler
    {
        static readonly object Registration = new();
        readonly Dictionary<string, Storage> _storages = [];

        /// <summary>The constructors Valley knows; every other global becomes a ClassDict and is refused.</summary>
        static IEnumerable<(string Name, IObjectConstructor Constructor)> Constructors() =>
            StorageTypes.Select(t => ("torch." + t.Name, (IObjectConstructor)t)).Concat(
            [
                ("torch._utils._rebuild_tensor_v2", new RebuildTensor(v2: true)),
                ("torch._utils._rebuild_tensor", new RebuildTensor(v2: false)),
                ("torch._utils._rebuild_parameter", new RefuseParameter()),
                ("collections.OrderedDict", new OrderedDictConstructor()),
            ]);

        /// <summary>
        /// Razorvine's constructor table is static and shared with TorchSharp.PyBridge, whose static constructor registers its own
        /// for the same names. So: let PyBridge register first (never in the middle of a load), then put ours in place for this
        /// one load under a lock, and put back what was there afterwards.
        /// </summary>
        public static object Load(byte[] pickle)
        {
            RuntimeHelpers.RunClassConstructor(typeof(TorchSharp.PyBridge.PyTorchUnpickler).TypeHandle);
            lock (Registration)
            {
                var saved = Constructors().Select(c => (c.Name, Previous: objectConstructors.TryGetValue(c.Name, out var p) ? p : null)).ToList();
                try
                {
                    foreach (var (name, constructor) in Constructors()) objectConstructors[name] = constructor;
                    using var unpickler = new StateDictUnpickler();
                    return unpickler.loads(pickle);
                }
                finally
                {
                    foreach (var (name, previous) in saved)
                    {
                        if (previous is null) objectConstructors.Remove(name);
                        else objectConstructors[name] = previous;
                    }
                }
            }
        }

        /// <summary>torch.save's persistent id of a storage: ('storage', storage type, key, location, number of elements).</summary>
        protected override object persistentLoad(object pid)
        {
            if (pid is not object[] { Length: 5 } id || id[0] is not "storage")
                throw new Refusal($"it refers to {Describe(pid)} outside the pickle, not to a storage");
            if (id[1] is not StorageType type)
                throw new Refusal(id[1] is ClassDictConstructor c ? $"storage type {c.module}.{c.name} is not supported" : $"a storage's type is {Describe(id[1])}");
            if (id[2] is not string key) throw new Refusal($"a storage's key is {Describe(id[2])}, not a string");
            long elements = Integer(id[4], $"storage '{key}''s number of elements");
            if (elements < 0 || elements > MaxElements) throw new Refusal($"storage '{key}' has {elements} elements");
            var storage = new Storage(type, key, elements);
            if (_storages.TryGetValue(key, out var seen))
            {
                if (seen != storage) throw new Refusal($"storage '{key}' is declared twice, as {seen.Elements} of torch.{seen.Type.Name} and as {elements} of torch.{type.Name}");
                return seen;
            }
            return _storages[key] = storage;
        }
    }
}
