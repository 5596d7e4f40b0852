namespace Valley.Cli;

/// <summary>
/// An exclusive lock on an output folder (a <c>.valley.lock</c> file opened without sharing), so that two processes never
/// write into the same folder; the second gets a clear error. Released when the process ends, even when killed.
/// </summary>
public sealed class OutputLock : IDisposable
{
    readonly FileStream _stream;
    readonly string _path;

    OutputLock(FileStream s, string path) { _stream = s; _path = path; }

    public static OutputLock Acquire(string dir)
    {
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, ".valley.lock");
        try
        {
            var fs = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            fs.SetLength(0);
            var pid = System.Text.Encoding.UTF8.GetBytes(Environment.ProcessId.ToString());
            fs.Write(pid);
            fs.Flush();
            return new OutputLock(fs, path);
        }
        catch (IOException)
        {
            throw new ValleyException($"--out {dir}: another valley process is writing into this folder (lock {path}); wait for it or choose another --out");
        }
    }

    public void Dispose()
    {
        _stream.Dispose();
        try { File.Delete(_path); } catch (IOException) { }
    }
}
