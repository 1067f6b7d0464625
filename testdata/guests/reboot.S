/* reboot: resets the machine through the i8042 controller (command 0xfe on
 * port 0x64), as Linux's "reboot=k" does. capsule exits 0. */
	.intel_syntax noprefix
	.code64
	.section .text
	.globl _start
_start:
	mov al, 0xfe
	out 0x64, al
	cli
1:	hlt
	jmp 1b
