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
        var tmp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Environment.ProcessId}.tmp");
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
