//! 16550A UART on an IOAPIC pin, built on vm-superio's serial model.

use std::io::Write;
use std::sync::{Arc, Mutex};

use log::warn;
use vm_device::bus::PioAddress;
use vm_device::DevicePio;
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::ioapic::Ioapic;

/// I/O base of COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// IOAPIC pin of COM1.
pub const COM1_PIN: usize = 4;

/// Raises an edge on an IOAPIC pin (the UART's interrupt line).
pub struct IoapicPin {
    ioapic: Arc<Ioapic>,
    pin: usize,
}

impl IoapicPin {
    /// A trigger for `pin` of `ioapic`.
    pub fn new(ioapic: Arc<Ioapic>, pin: usize) -> Self {
        Self { ioapic, pin }
    }
}

impl Trigger for IoapicPin {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.ioapic.pulse(self.pin);
        Ok(())
    }
}

/// Signals an eventfd when the guest has drained the receive FIFO, so the input side can
/// push more bytes.
pub struct InputReady(pub EventFd);

impl SerialEvents for InputReady {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.0.write(1) {
            warn!("serial: cannot signal input readiness: {e}");
        }
    }
}

type Uart = Serial<IoapicPin, InputReady, Box<dyn Write + Send>>;

/// A serial port device for the PIO bus.
pub struct SerialPort {
    uart: Mutex<Uart>,
}

impl SerialPort {
    /// Creates the port; guest output goes to `out`, `input_ready` is signalled when the
    /// receive FIFO empties.
    pub fn new(irq: IoapicPin, input_ready: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Mutex::new(Serial::with_events(irq, InputReady(input_ready), out)),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&self, bytes: &[u8]) -> usize {
        let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        if uart.fifo_capacity() == 0 {
            return 0;
        }
        uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Flushes buffered guest output.
    pub fn flush(&self) {
        let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
        let _ = uart.writer_mut().flush();
    }
}

impl DevicePio for SerialPort {
    fn pio_read(&self, _base: PioAddress, offset: u16, data: &mut [u8]) {
        data.fill(0xff);
        if data.len() == 1 && offset < 8 {
            data[0] = self
                .uart
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read(offset as u8);
        }
    }

    fn pio_write(&self, _base: PioAddress, offset: u16, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            let mut uart = self.uart.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = uart.write(offset as u8, data[0]) {
                warn!("serial: {e:?}");
            }
            // Guest output is interactive: flush at line ends so the console stays live.
            if offset == 0 && data[0] == b'\n' {
                let _ = uart.writer_mut().flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use interrupt::{InterruptHierarchy, KvmVectorLayer, NoRemap, RecordingBackend};
    use vm_device::DeviceMmio;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn setup() -> (Arc<Ioapic>, SerialPort, Arc<Mutex<Vec<u8>>>, EventFd) {
        let h = InterruptHierarchy::new(
            Arc::new(KvmVectorLayer::new(
                Arc::new(RecordingBackend::default()),
                24,
                4096,
            )),
            Arc::new(NoRemap),
        );
        let io = Arc::new(Ioapic::new(0, &h));
        let out = Arc::new(Mutex::new(Vec::new()));
        let ev = EventFd::new(EFD_NONBLOCK).unwrap();
        let port = SerialPort::new(
            IoapicPin::new(io.clone(), COM1_PIN),
            ev.try_clone().unwrap(),
            Box::new(Shared(out.clone())),
        );
        (io, port, out, ev)
    }

    #[test]
    fn output_reaches_writer() {
        let (_, port, out, _) = setup();
        for b in b"hi\n" {
            port.pio_write(PioAddress(COM1_PORT), 0, &[*b]);
        }
        assert_eq!(&*out.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn input_raises_pin_when_rx_interrupt_enabled() {
        let (io, port, _, ev) = setup();
        // Unmask pin 4, edge, vector 0x24.
        io.mmio_write(vm_device::bus::MmioAddress(0), 0, &0x18u32.to_le_bytes());
        io.mmio_write(vm_device::bus::MmioAddress(0), 0x10, &0x24u32.to_le_bytes());
        port.pio_write(PioAddress(COM1_PORT), 1, &[0x01]); // IER: received data available
        assert_eq!(port.enqueue_input(b"ab"), 2);
        assert_eq!(io.delivered(COM1_PIN), 1);
        let mut b = [0u8];
        port.pio_read(PioAddress(COM1_PORT), 0, &mut b);
        assert_eq!(b[0], b'a');
        port.pio_read(PioAddress(COM1_PORT), 0, &mut b);
        assert_eq!(b[0], b'b');
        assert_eq!(ev.read().unwrap(), 1);
    }

    #[test]
    fn odd_sized_accesses_are_ignored() {
        let (_, port, out, _) = setup();
        port.pio_write(PioAddress(COM1_PORT), 0, b"xy");
        let mut b = [0u8; 2];
        port.pio_read(PioAddress(COM1_PORT), 9, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        assert!(out.lock().unwrap().is_empty());
    }
}
