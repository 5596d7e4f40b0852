using Valley.IO;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Valley.IO;

/// <summary>Writes files atomically (temporary file in the same folder, then rename), so a crash never leaves half a file.</summary>
internal static class AtomicFile
{
    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    public static void WriteAllText(string path, string text) => WriteAllBytes(path, Encoding.UTF8.GetBytes(text));

    public static void WriteAllBytes(string path, byte[] bytes)
    {
        var full = Path.GetFullPath(path);
        var dir = Path.GetDirectoryName(full)!;
        var tmp = Temporary(full);
        try
        {
            Directory.CreateDirectory(dir);
            File.WriteAllBytes(tmp, bytes);
            File.Move(tmp, full, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try { File.Delete(tmp); } catch (Exception) { /* best effort */ }
            throw new ValleyException($"{path}: cannot write ({e.Message})", e);
        }
    }

    /// <summary>
    /// The temporary file a write to <paramref name="full"/> goes through, <c>.name.PID.tmp</c> (and
    /// <paramref name="extension"/>) beside it. A process killed mid-write leaves its temporary behind; the first write of a
    /// later process into the folder removes the temporaries of processes that no longer run, so that a resumed run leaves
    /// nothing behind.
    /// </summary>
    public static string Temporary(string full, string extension = "")
    {
        var dir = Path.GetDirectoryName(full)!;
        if (Swept.TryAdd(dir, true)) RemoveStaleTemporaries(dir);
        return Path.Combine(dir, $".{Path.GetFileName(full)}.{Environment.ProcessId}.tmp{extension}");
    }

    static readonly System.Collections.Concurrent.ConcurrentDictionary<string, bool> Swept = new();

    /// <summary>Removes <c>.name.PID.tmp*</c> files in <paramref name="dir"/> whose process is gone.</summary>
    internal static void RemoveStaleTemporaries(string dir)
    {
        if (!Directory.Exists(dir)) return;
        foreach (var file in Directory.EnumerateFiles(dir, ".*.tmp*"))
        {
            var m = StaleName.Match(Path.GetFileName(file));
            if (!m.Success || !int.TryParse(m.Groups[1].Value, out int pid) || pid == Environment.ProcessId || Alive(pid)) continue;
            try { File.Delete(file); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { /* best effort */ }
        }
    }

    static readonly System.Text.RegularExpressions.Regex StaleName = new(@"^\..+\.(\d+)\.tmp(\.[A-Za-z0-9]+)?$");

    /// <summary>Whether process <paramref name="pid"/> is running.</summary>
    internal static bool Alive(int pid)
    {
        try { using var p = System.Diagnostics.Process.GetProcessById(pid); return !p.HasExited; }
        catch (ArgumentException) { return false; }
        catch (InvalidOperationException) { return false; }
    }

    public static string ToJson<T>(T value) => JsonSerializer.Serialize(value, Json);

    public static void WriteJson<T>(string path, T value) => WriteAllText(path, ToJson(value) + "\n");

    /// <summary>Fail early with a clear message when an output folder cannot be created or written.</summary>
    public static void EnsureWritableFolder(string dir, string option = "--out")
    {
        if (string.IsNullOrWhiteSpace(dir)) throw new ValleyException($"{option}: must name a folder, got '{dir}'");
        try
        {
            Directory.CreateDirectory(dir);
            var probe = Path.Combine(dir, $".valley-write-test-{Environment.ProcessId}");
            File.WriteAllText(probe, "");
            File.Delete(probe);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ValleyException($"{option} {dir}: folder cannot be written ({e.Message})", e);
        }
    }
}
